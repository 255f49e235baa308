//! The binary's start-up contract: bad config reported whole, an unreachable broker or missing
//! topics in one clear line, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;

use common::{TestEnv, free_port};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_config_is_reported_whole_with_paths() {
    let t = TestEnv::new("badconfig", &[]);
    let file = t.dir.join("bad.toml");
    std::fs::write(
        &file,
        "[kafka]\nbrokerz = \"x\"\n[ingest]\nsegment_max_events = \"lots\"\n[telemetry]\nlog_format = \"xml\"\n",
    )
    .unwrap();
    let out = t
        .quiver(&["--config", file.to_str().unwrap(), "config", "check"])
        .env("QUIVER__API__LISTEN", "nowhere")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("kafka.brokerz"), "{err}");
    assert!(err.contains("unknown key"), "{err}");
    assert!(err.contains("ingest.segment_max_events"), "{err}");
    assert!(err.contains("expected integer, found string"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn good_config_checks_and_shows() {
    let t = TestEnv::new("goodconfig", &[]);
    let out = t.quiver(&["config", "check"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("labels, transactions"), "{stdout}");
    assert!(
        stdout.contains("2 feature view(s): merchant_txn, user_txn"),
        "{stdout}"
    );
    let out = t
        .quiver(&["config", "show"])
        .env("QUIVER__INGEST__SEGMENT_MAX_EVENTS", "77")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("segment_max_events = 77"));
}

#[test]
fn unreachable_broker_is_one_clear_error() {
    let t = TestEnv::new("unreachable", &[]);
    let port = free_port();
    let out = t
        .quiver(&["ingest"])
        .env("QUIVER__KAFKA__BROKERS", format!("127.0.0.1:{port}"))
        .env("QUIVER__KAFKA__CONNECT_TIMEOUT_MS", "1500")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("quiver: error: cannot reach Kafka at 127.0.0.1:"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_topics_are_named() {
    let t = TestEnv::new("notopics", &[]);
    let out = t.quiver(&["ingest"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("topics missing on the broker"), "{err}");
    assert!(last.contains(&t.topic("transactions.dlq")), "{err}");
}

#[test]
fn bad_feature_definitions_stop_start_up_with_precise_errors() {
    let t = TestEnv::new("badview", &[]);
    let schemas = t.dir.join("schemas");
    std::fs::create_dir_all(schemas.join("sources")).unwrap();
    std::fs::create_dir_all(schemas.join("views")).unwrap();
    let repo = std::path::Path::new(common::REPO).join("schemas/sources");
    for source in ["transactions.toml", "labels.toml"] {
        std::fs::copy(repo.join(source), schemas.join("sources").join(source)).unwrap();
    }
    std::fs::write(
        schemas.join("views/bad.toml"),
        "name = \"bad\"\nentity = \"user_id\"\nsource = \"transactions\"\n\
         [[features]]\nname = \"s\"\nop = \"sum\"\ncolumn = \"country\"\nwindow = \"1h\"\n\
         [[features]]\nname = \"w\"\nop = \"count\"\nwindow = \"fortnight\"\n",
    )
    .unwrap();
    let out = t
        .quiver(&["config", "check"])
        .env("QUIVER__SCHEMAS__DIR", &schemas)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sum over `country` needs a float or int column"),
        "{err}"
    );
    assert!(err.contains("window `fortnight`"), "{err}");
}

#[test]
fn unreachable_redis_is_one_clear_error() {
    let t = TestEnv::new("noredis", &[]);
    let url = format!("redis://127.0.0.1:{}", free_port());
    for command in ["ingest", "serve"] {
        let out = t
            .quiver(&[command])
            .env("QUIVER__REDIS__URL", &url)
            .env("QUIVER__REDIS__CONNECT_TIMEOUT_MS", "1000")
            .env("QUIVER__API__LISTEN", format!("127.0.0.1:{}", free_port()))
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("quiver: error: cannot reach Redis at {url}")),
            "{command}: {err}"
        );
        assert!(!err.contains("panicked"), "{command}: {err}");
    }
}

#[test]
fn secrets_are_never_printed() {
    // The Redis URL and the token come from the environment (which the harness sets too), the
    // SASL password from a file: every layer is redacted.
    let port = free_port();
    let url = format!("redis://app:r3dis-pw@127.0.0.1:{port}");
    let t = TestEnv::new(
        "secrets",
        &[
            ("QUIVER__REDIS__URL", url.as_str()),
            ("QUIVER__REDIS__CONNECT_TIMEOUT_MS", "1000"),
            ("QUIVER__API__TOKEN", "api-t0ken"),
        ],
    );
    let file = t.dir.join("secret.toml");
    std::fs::write(
        &file,
        "[kafka.properties]\n\"sasl.password\" = \"sasl-pw\"\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let secrets = ["r3dis-pw", "api-t0ken", "sasl-pw"];
    let out = t
        .quiver(&["--config", config, "config", "show"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("redis://***@127.0.0.1"), "{shown}");
    for secret in secrets {
        assert!(
            !shown.contains(secret),
            "config show printed {secret}:\n{shown}"
        );
    }
    // An unreachable Redis is named without its credentials.
    for command in ["ingest", "serve"] {
        let out = t
            .quiver(&["--config", config, command])
            .env("QUIVER__API__LISTEN", format!("127.0.0.1:{}", free_port()))
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(err.contains("redis://***@127.0.0.1"), "{command}: {err}");
        for secret in secrets {
            assert!(!err.contains(secret), "{command} printed {secret}: {err}");
        }
    }
}
