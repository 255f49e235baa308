//! Ingest against real tansu: exactly-once landing in the raw store, dead letters with reasons,
//! committed offsets, SIGKILL mid-stream, and a consumer group of two.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::reference::{self, Ev};
use common::{
    TestEnv, committed, eventually, free_port, produce_all, read_topic, services, start_in_process,
};
use quiver_demo::{Generator, GeneratorOptions, Transaction};

fn transactions(seed: u64, n: usize) -> Vec<Transaction> {
    let mut g = Generator::new(
        seed,
        GeneratorOptions {
            users: 300,
            ..GeneratorOptions::default()
        },
    );
    let start = DateTime::<Utc>::from_timestamp(1_795_687_200, 0).unwrap();
    (0..n)
        .map(|i| g.next_transaction(start + chrono::Duration::milliseconds(i as i64 * 37)))
        .collect()
}

fn messages(txns: &[Transaction]) -> Vec<(String, Vec<u8>)> {
    txns.iter()
        .map(|t| (t.user_id.clone(), t.to_json().into_bytes()))
        .collect()
}

fn end_offsets(deliveries: &[(i32, i64)], partitions: i32) -> Vec<i64> {
    let mut ends = vec![0; partitions as usize];
    for &(p, o) in deliveries {
        ends[p as usize] = ends[p as usize].max(o + 1);
    }
    ends
}

/// The online features of every user and merchant equal the reference at the latest event
/// time (so nothing was applied twice or lost), and each view's feature log has exactly one row
/// per event.
fn assert_features_exact(t: &TestEnv, txns: &[Transaction], deliveries: &[(i32, i64)]) {
    let events: Vec<Ev> = txns
        .iter()
        .zip(deliveries)
        .map(|(x, (partition, offset))| Ev {
            time: x.event_time.timestamp_micros(),
            partition: *partition,
            offset: *offset,
            user: x.user_id.clone(),
            merchant: x.merchant_id.clone(),
            amount: x.amount,
            country: x.country.clone(),
        })
        .collect();
    let at = events.iter().map(|e| e.time).max().unwrap();
    for (view_name, column) in [("user_txn", "user"), ("merchant_txn", "merchant")] {
        let view = t.views.view(view_name).unwrap();
        let entities: std::collections::BTreeSet<&str> = events
            .iter()
            .map(|e| {
                if column == "user" {
                    e.user.as_str()
                } else {
                    e.merchant.as_str()
                }
            })
            .collect();
        for entity in entities {
            let online = common::online_at(t, view_name, entity, at);
            let problems = reference::diff(
                &online,
                &reference::expected(view, &reference::kept(view, &events, entity, None), at),
            );
            assert!(problems.is_empty(), "{view_name}/{entity}: {problems:?}");
        }
        let rows = common::log_query(
            t,
            view_name,
            "SELECT count(*) AS n, count(DISTINCT _partition * 1000000000 + _offset) AS d FROM log",
        );
        let n = rows[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        let d = rows[0]
            .column(1)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(
            (n, d),
            (events.len() as i64, events.len() as i64),
            "{view_name}: one log row per event"
        );
    }
}

/// The raw store holds `n` transactions, each once: `n` rows, `n` distinct ids, and no
/// (partition, offset) twice.
fn assert_exactly_once(t: &TestEnv, n: i64) {
    assert_eq!(t.raw_scalar("transactions", "SELECT count(*) FROM raw"), n);
    assert_eq!(
        t.raw_scalar("transactions", "SELECT count(DISTINCT txn_id) FROM raw"),
        n
    );
    assert_eq!(t.raw_scalar("transactions", DUPLICATES), 0);
}

const DUPLICATES: &str =
    "SELECT count(*) FROM (SELECT _partition, _offset FROM raw GROUP BY 1, 2 HAVING count(*) > 1)";

#[test]
fn valid_events_land_exactly_once_and_bad_ones_reach_the_dlq_with_reasons() {
    let t = TestEnv::new(
        "exactly-once",
        &[("QUIVER__INGEST__MAX_EVENT_BYTES", "4096")],
    );
    t.create_topics();
    let txns = transactions(11, 3_000);
    let mut msgs = messages(&txns);
    let ok = r#""merchant_id":"m","country":"FR""#;
    let bad: Vec<(&str, String)> = vec![
        ("not_json", "{oops".to_string()),
        ("not_object", "[1,2,3]".to_string()),
        (
            "wrong_type",
            format!(
                r#"{{"txn_id":"b1","user_id":"u1",{ok},"amount":"lots","event_time":"2026-11-26T10:00:00Z"}}"#
            ),
        ),
        (
            "missing_field",
            format!(r#"{{"txn_id":"b2",{ok},"amount":1.5,"event_time":"2026-11-26T10:00:00Z"}}"#),
        ),
        (
            "bad_event_time",
            format!(r#"{{"txn_id":"b3","user_id":"u1",{ok},"amount":1.5,"event_time":"noon"}}"#),
        ),
        ("too_large", format!(r#"{{"pad":"{}"}}"#, "x".repeat(5_000))),
    ];
    for (i, (_, payload)) in bad.iter().enumerate() {
        msgs.insert(
            i * 400 + 7,
            ("u1".to_string(), payload.clone().into_bytes()),
        );
    }
    let topic = t.topic("transactions");
    let deliveries = produce_all(&services().kafka, &topic, &msgs);

    let ingest = start_in_process(&t);
    let landed = eventually(Duration::from_secs(60), || {
        ingest.stats.events.load(Ordering::Relaxed) >= 3_000
            && ingest.stats.dead_letters.load(Ordering::Relaxed) >= 6
    });
    let report = ingest.stop();
    assert!(landed, "ingest did not catch up: {report:?}");
    assert_eq!(report.events, 3_000);
    assert_eq!(report.dead_letters, 6);

    // Every valid event exactly once, with its values, read back with DataFusion.
    assert_exactly_once(&t, 3_000);
    let cents: i64 = txns.iter().map(|t| (t.amount * 100.0).round() as i64).sum();
    assert_eq!(
        t.raw_scalar(
            "transactions",
            "SELECT CAST(round(sum(amount) * 100) AS BIGINT) FROM raw"
        ),
        cents
    );
    let first = &txns[0];
    let sql = format!(
        "SELECT count(*) FROM raw WHERE txn_id = '{}' AND user_id = '{}' AND merchant_id = '{}' AND country = '{}' \
         AND event_time = TIMESTAMP '2026-11-26T10:00:00Z'",
        first.txn_id, first.user_id, first.merchant_id, first.country
    );
    assert_eq!(t.raw_scalar("transactions", &sql), 1);

    // Dead letters: original payload, reason and provenance in headers.
    let dlq = read_topic(
        &services().kafka,
        &t.config.kafka.dlq_topic("transactions"),
        6,
        Duration::from_secs(30),
    );
    assert_eq!(dlq.len(), 6);
    let mut by_reason: BTreeMap<String, &common::DeadLetter> = BTreeMap::new();
    for letter in &dlq {
        by_reason.insert(letter.headers["quiver.reason"].clone(), letter);
        assert_eq!(letter.headers["quiver.source.topic"], topic);
        assert!(
            letter.headers["quiver.source.offset"]
                .parse::<i64>()
                .is_ok()
        );
        assert!(!letter.headers["quiver.error"].is_empty());
    }
    for (reason, payload) in &bad {
        let letter = by_reason
            .get(*reason)
            .unwrap_or_else(|| panic!("no dead letter for {reason}"));
        assert_eq!(letter.payload, payload.as_bytes(), "{reason}");
    }

    // Offsets committed up to the end of every partition.
    let group = &t.config.ingest.group_id;
    assert_eq!(
        committed(&services().kafka, group, &topic, 4),
        end_offsets(&deliveries, 4)
    );
}

/// A `quiver ingest` child process with its admin listener on a free port.
struct ChildIngest {
    child: Child,
    admin: String,
}

fn spawn_ingest(t: &TestEnv, extra: &[(&str, &str)]) -> ChildIngest {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut cmd = t.quiver(&["ingest"]);
    let log = std::fs::File::create(
        t.dir
            .join(format!("ingest-{}.log", admin.replace(':', "_"))),
    )
    .unwrap();
    cmd.env("QUIVER__INGEST__ADMIN_LISTEN", &admin)
        .env("RUST_LOG", "quiver_ingest=debug,info")
        .env("QUIVER__TELEMETRY__LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    ChildIngest {
        child: cmd.spawn().expect("spawn quiver ingest"),
        admin,
    }
}

fn scrape(addr: &str, metric: &str) -> f64 {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return 0.0;
    };
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn segments(t: &TestEnv) -> usize {
    let store = quiver_store::RawStore::open(&t.config.store.dir).unwrap();
    store.segments("transactions").map(|s| s.len()).unwrap_or(0)
}

/// Waits for a child, killing it (and failing the test) if it outlives `timeout`.
fn wait_at_most(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    wait_at_most(child, Duration::from_secs(60))
}

#[test]
fn sigkill_mid_stream_neither_loses_nor_duplicates() {
    let t = TestEnv::new(
        "sigkill",
        &[
            ("QUIVER__INGEST__SEGMENT_MAX_AGE_MS", "100"),
            ("QUIVER__INGEST__SEGMENT_MAX_EVENTS", "500"),
        ],
    );
    t.create_topics();
    let topic = t.topic("transactions");
    let txns = transactions(21, 24_000);
    let msgs = messages(&txns);
    let kafka = services().kafka.clone();
    // A stream that keeps flowing while we kill consumers: 6 bursts of 4 000.
    let producer = {
        let (kafka, topic, msgs) = (kafka.clone(), topic.clone(), msgs.clone());
        std::thread::spawn(move || {
            let mut deliveries = Vec::new();
            for chunk in msgs.chunks(4_000) {
                deliveries.extend(produce_all(&kafka, &topic, chunk));
                std::thread::sleep(Duration::from_millis(700));
            }
            deliveries
        })
    };

    // 1st member never commits on its timer, and crashes (abort, like kill -9) right after its
    // 8th raw segment is durable, before that batch's features reach Redis. So the next member
    // finds both windows: batches fully written but uncommitted (must not be applied twice) and
    // one batch in the raw store only (must still be applied).
    let mut first = spawn_ingest(
        &t,
        &[
            ("QUIVER__INGEST__COMMIT_INTERVAL_MS", "3600000"),
            ("QUIVER_FAILPOINT", "raw-written:8"),
        ],
    );
    let status = wait_at_most(&mut first.child, Duration::from_secs(120));
    assert!(
        !status.success(),
        "the first member should have crashed at its failpoint: {status}"
    );
    assert!(
        segments(&t) >= 8,
        "first member wrote {} segments",
        segments(&t)
    );

    let after_first = t.raw_scalar("transactions", "SELECT count(*) FROM raw");
    assert!(after_first > 0);

    // 2nd member: killed in the middle of the stream, after committing some of it.
    let mut second = spawn_ingest(&t, &[]);
    assert!(eventually(Duration::from_secs(60), || scrape(
        &second.admin,
        "quiver_ingest_replay_skipped_total"
    ) > 0.0));
    let before = segments(&t);
    assert!(
        eventually(Duration::from_secs(60), || segments(&t) >= before + 4),
        "second member made no progress"
    );
    second.child.kill().unwrap();
    second.child.wait().unwrap();

    // 3rd member runs to the end and stops gracefully.
    let deliveries = producer.join().unwrap();
    let mut third = spawn_ingest(&t, &[]);
    let complete = eventually(Duration::from_secs(90), || {
        t.raw_scalar("transactions", "SELECT count(*) FROM raw") >= 24_000
    });
    let status = sigterm(&mut third.child);
    assert!(
        complete,
        "only {} rows",
        t.raw_scalar("transactions", "SELECT count(*) FROM raw")
    );
    assert!(status.success(), "graceful stop failed: {status}");

    assert_exactly_once(&t, 24_000);
    assert_eq!(
        committed(&kafka, &t.config.ingest.group_id, &topic, 4),
        end_offsets(&deliveries, 4)
    );

    // Segments of one partition never overlap: each offset is in exactly one file.
    let store = quiver_store::RawStore::open(&t.config.store.dir).unwrap();
    let segs = store.segments("transactions").unwrap();
    for pair in segs.windows(2) {
        if pair[0].id.partition == pair[1].id.partition {
            assert!(
                pair[0].id.last_offset < pair[1].id.first_offset,
                "{:?} overlaps {:?}",
                pair[0].id,
                pair[1].id
            );
        }
    }

    // A restart after the graceful stop resumes from the commit and takes only new events.
    let more_txns = transactions(22, 2_000);
    let more_deliveries = produce_all(&kafka, &topic, &messages(&more_txns));
    let mut fourth = spawn_ingest(&t, &[]);
    let caught_up = eventually(Duration::from_secs(60), || {
        t.raw_scalar("transactions", "SELECT count(*) FROM raw") >= 26_000
    });
    let skipped = scrape(&fourth.admin, "quiver_ingest_replay_skipped_total");
    assert!(sigterm(&mut fourth.child).success());
    assert!(caught_up);
    assert_eq!(
        t.raw_scalar("transactions", "SELECT count(*) FROM raw"),
        26_000
    );
    assert_eq!(t.raw_scalar("transactions", DUPLICATES), 0);
    assert_eq!(
        skipped, 0.0,
        "a member starting from a clean commit replays nothing"
    );
    // Online state and feature log after two SIGKILLs and two restarts: exactly as if each
    // event had been applied once.
    let all_txns: Vec<Transaction> = txns.iter().chain(&more_txns).cloned().collect();
    let all_deliveries: Vec<(i32, i64)> =
        deliveries.iter().chain(&more_deliveries).copied().collect();
    assert_features_exact(&t, &all_txns, &all_deliveries);

    // The log written across the crashes (replayed batches span raw segments) is what the batch
    // path recomputes, and a backfill replaces it without duplicating a row.
    let verify = t.quiver(&["verify"]).output().unwrap();
    let text = String::from_utf8_lossy(&verify.stdout).to_string();
    assert!(
        verify.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let backfill = t.quiver(&["backfill"]).output().unwrap();
    assert!(
        backfill.status.success(),
        "{}",
        String::from_utf8_lossy(&backfill.stderr)
    );
    assert_features_exact(&t, &all_txns, &all_deliveries);
    assert!(t.quiver(&["verify"]).output().unwrap().status.success());
}

#[test]
fn two_members_split_the_partitions_and_hand_over_on_leave() {
    let t = TestEnv::new("group", &[]);
    t.create_topics();
    let topic = t.topic("transactions");
    let kafka = services().kafka.clone();
    let txn_batches: Vec<Vec<Transaction>> = (0..3).map(|i| transactions(30 + i, 5_000)).collect();
    let batches: Vec<Vec<(String, Vec<u8>)>> = txn_batches.iter().map(|b| messages(b)).collect();
    let count = || t.raw_scalar("transactions", "SELECT count(*) FROM raw");

    let a = start_in_process(&t);
    let mut deliveries = produce_all(&kafka, &topic, &batches[0]);
    assert!(
        eventually(Duration::from_secs(60), || count() >= 5_000),
        "member A alone: {}",
        count()
    );

    // B joins: A drains and commits on revoke, the partitions are split.
    let b = start_in_process(&t);
    deliveries.extend(produce_all(&kafka, &topic, &batches[1]));
    assert!(
        eventually(Duration::from_secs(60), || count() >= 10_000),
        "A + B: {}",
        count()
    );
    assert!(
        b.stats.events.load(Ordering::Relaxed) > 0,
        "B never got a partition"
    );

    // A leaves: its partitions move to B, which continues from A's commits.
    let report_a = a.stop();
    deliveries.extend(produce_all(&kafka, &topic, &batches[2]));
    assert!(
        eventually(Duration::from_secs(60), || count() >= 15_000),
        "B alone: {}",
        count()
    );
    let report_b = b.stop();

    assert_exactly_once(&t, 15_000);
    // Two members (with partitions moving between them twice) computed what one would have.
    let all_txns: Vec<Transaction> = txn_batches.concat();
    assert_features_exact(&t, &all_txns, &deliveries);
    assert_eq!(
        report_a.events + report_b.events,
        15_000,
        "A {report_a:?} B {report_b:?}"
    );
    assert_eq!(
        committed(&kafka, &t.config.ingest.group_id, &topic, 4),
        end_offsets(&deliveries, 4)
    );
}
