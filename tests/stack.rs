//! `quiver stack up|status|down` with the project's own script, on free loopback ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpStream;

use common::{TestEnv, free_port, services};

#[test]
fn stack_up_is_idempotent_creates_topics_and_down_stops_it() {
    let kafka = format!("127.0.0.1:{}", free_port());
    let redis = format!("127.0.0.1:{}", free_port());
    let t = TestEnv::new(
        "stack",
        &[
            ("QUIVER__KAFKA__BROKERS", &kafka),
            ("QUIVER__REDIS__URL", &format!("redis://{redis}")),
            ("QUIVER__KAFKA__TOPIC_PREFIX", ""),
        ],
    );
    let tansu = services().tansu.display().to_string();
    let run = |args: &[&str]| {
        let out = t
            .quiver(args)
            .env("QUIVER_TANSU_BIN", &tansu)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };

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

    let (ok, text) = run(&["stack", "down"]);
    assert!(ok, "{text}");
    assert!(TcpStream::connect(&kafka).is_err(), "tansu still listening");
    assert!(TcpStream::connect(&redis).is_err(), "redis still listening");
    let (_, text) = run(&["stack", "status"]);
    assert!(
        text.contains("tansu: stopped") && text.contains("redis: stopped"),
        "{text}"
    );
}
