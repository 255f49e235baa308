//! `quiver stack up|status|down` with the project's own script, on free loopback ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpStream;

use datafusion::arrow::array::RecordBatch;

use common::{TestEnv, free_port, services};

/// An environment whose broker and Redis are its own, on free ports, for `quiver stack up`.
fn own_stack(test: &str, extra: &[(&str, &str)]) -> TestEnv {
    let kafka = format!("127.0.0.1:{}", free_port());
    let redis = format!("redis://127.0.0.1:{}", free_port());
    let mut env = vec![
        ("QUIVER__KAFKA__BROKERS", kafka.as_str()),
        ("QUIVER__REDIS__URL", redis.as_str()),
        ("QUIVER__KAFKA__TOPIC_PREFIX", ""),
    ];
    env.extend_from_slice(extra);
    TestEnv::new(test, &env)
}

/// Runs `quiver` with the harness's tansu binary: (success, stdout + stderr).
fn quiver(t: &TestEnv, args: &[&str]) -> (bool, String) {
    let mut cmd = t.quiver(args);
    cmd.env("QUIVER_TANSU_BIN", services().tansu.display().to_string());
    common::run_quiver(cmd)
}

#[test]
fn stack_up_is_idempotent_creates_topics_and_down_stops_it() {
    let t = own_stack("stack", &[]);
    let run = |args: &[&str]| quiver(&t, args);

    let (ok, text) = run(&["stack", "up"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("topic transactions (4 partitions): created"),
        "{text}"
    );
    let topics = quiver_kafka::list_topics(&t.config.kafka).unwrap();
    for topic in ["transactions", "transactions.dlq", "labels", "labels.dlq"] {
        assert!(
            topics.iter().any(|t| t == topic),
            "{topic} missing from {topics:?}"
        );
    }

    let (ok, text) = run(&["stack", "up"]);
    assert!(ok, "{text}");
    assert!(text.contains("already running"), "{text}");
    assert!(
        text.contains("topic transactions (4 partitions): exists"),
        "{text}"
    );

    let (ok, text) = run(&["stack", "status"]);
    assert!(
        ok && text.contains("tansu: running") && text.contains("redis: running"),
        "{text}"
    );

    // Online state written now (Redis persists it across the restart below).
    let key = format!("{}:user_txn:u1", t.config.redis.key_prefix);
    let mut conn = redis::Client::open(t.config.redis.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("HSET")
        .arg(&key)
        .arg("p0")
        .arg("x")
        .query::<i64>(&mut conn)
        .unwrap();
    redis::cmd("SAVE").query::<String>(&mut conn).unwrap();
    drop(conn);

    let (ok, text) = run(&["stack", "down"]);
    assert!(ok, "{text}");
    let redis = t.config.redis.url.trim_start_matches("redis://");
    assert!(
        TcpStream::connect(t.config.first_broker()).is_err(),
        "tansu still listening"
    );
    assert!(TcpStream::connect(redis).is_err(), "redis still listening");
    let (_, text) = run(&["stack", "status"]);
    assert!(
        text.contains("tansu: stopped") && text.contains("redis: stopped"),
        "{text}"
    );

    // tansu keeps topics in memory: after a restart `transactions` is created anew, empty, its
    // offsets restarting at 0. Raw segments and online state built from the old topic must not
    // make ingest skip the new events as replays, so `up` moves the segments aside and resets
    // the source's views.
    let store =
        quiver_store::SegmentStore::open(&t.config.store.dir, quiver_store::Table::Raw).unwrap();
    let schema = t.catalog.source("transactions").unwrap().raw_schema();
    let segment = quiver_store::SegmentId {
        partition: 0,
        first_offset: 0,
        last_offset: 99,
    };
    let date = chrono::NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
    store
        .append(
            "transactions",
            date,
            segment,
            &RecordBatch::new_empty(schema),
        )
        .unwrap();
    let (ok, text) = run(&["stack", "up"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("topic transactions (4 partitions): created; raw segments of its previous incarnation moved to"),
        "{text}"
    );
    assert!(
        text.contains("online state and feature logs of merchant_txn, user_txn reset"),
        "{text}"
    );
    assert!(store.segments("transactions").unwrap().is_empty());
    let mut conn = redis::Client::open(t.config.redis.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let exists: i64 = redis::cmd("EXISTS").arg(&key).query(&mut conn).unwrap();
    assert_eq!(
        exists, 0,
        "stale online state survived the topic's re-creation"
    );
    drop(conn);
    let (ok, text) = run(&["stack", "down"]);
    assert!(ok, "{text}");
}

#[test]
fn quiver_up_ingests_trains_a_first_model_and_scores_every_transaction_after_it() {
    let api = format!("127.0.0.1:{}", free_port());
    let t = own_stack("up", &[("QUIVER__API__LISTEN", &api)]);
    let run = |args: &[&str]| quiver(&t, args);
    let (ok, text) = run(&[
        "up",
        "--exit-when-done",
        "--count",
        "8000",
        "--rate",
        "2000",
        "--label-delay",
        "0",
        "--users",
        "300",
        "--warmup-secs",
        "2",
    ]);
    let (down, down_text) = run(&["stack", "down"]);
    assert!(ok, "{text}");
    assert!(down, "{down_text}");
    assert!(text.contains("model: trained and promoted"), "{text}");
    // "done: ...; N predictions (...), M events before a model, ...": the worker scores every
    // valid transaction from the first model on; those before it have features only.
    let done = text
        .lines()
        .find(|l| l.starts_with("done:"))
        .unwrap_or_default();
    // The number right before `what`.
    let count = |what: &str| -> u64 {
        done.find(what)
            .and_then(|at| done[..at].split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{what}` count in {done}"))
    };
    let (predictions, before) = (count(" predictions ("), count(" events before a model"));
    // 4 000 warm-up transactions, then 4 000 live ones, which do not wait for the first
    // model: each valid one is scored or, before the model is picked up, has features only.
    assert!(predictions > 0, "{done}");
    assert!(predictions + before >= 7_960, "{done}");
    let (ok, models) = run(&["models", "list"]);
    assert!(ok && models.contains("production"), "{models}");
}

#[test]
fn topics_create_makes_the_declared_topics_on_the_configured_broker_once() {
    // The harness's broker, not a local stack `quiver stack` would start: what a deployment's
    // one-shot job runs against its Kafka cluster.
    let t = TestEnv::new("topics", &[]);
    let (ok, text) = common::run_quiver(t.quiver(&["topics", "create"]));
    assert!(ok, "{text}");
    for (topic, partitions) in [
        ("transactions", 4),
        ("transactions.dlq", 1),
        ("labels", 2),
        ("predictions", 4),
    ] {
        let name = t.topic(topic);
        assert!(
            text.contains(&format!("topic {name} ({partitions} partitions): created")),
            "{topic}: {text}"
        );
    }
    let listed = quiver_kafka::list_topics(&t.config.kafka).unwrap();
    assert!(listed.contains(&t.topic("predictions")), "{listed:?}");
    let (ok, again) = common::run_quiver(t.quiver(&["topics", "create"]));
    assert!(ok && !again.contains("created"), "{again}");
}
