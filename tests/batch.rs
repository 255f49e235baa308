//! The batch side against real tansu and Redis: `quiver verify` finds the streaming feature log
//! equal to the DataFusion recomputation (and finds a changed definition unequal), a backfill
//! reproduces the log without duplicating it, `--materialize` rebuilds an empty online store
//! that answers exactly like the streaming one, and training sets are point-in-time correct.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use common::{
    TestEnv, eventually, http, log_query, log_rows, produce_all, services, start_in_process,
};
use datafusion::arrow::array::{
    Array, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use quiver_demo::{GeneratorOptions, Transaction};
use serde_json::json;

const MIN: i64 = 60_000_000;

fn transactions(seed: u64, n: usize) -> Vec<Transaction> {
    let options = GeneratorOptions {
        users: 200,
        ..GeneratorOptions::default()
    };
    common::stream::demo_transactions(seed, options, 911, 0, n)
}

/// Produces `txns` (and a label per transaction) at 1 000 a second to a running ingest, and
/// waits until every event is logged. A stream, not one backlog: a backlog can be taken in one
/// poll, one window per partition, and then no event would read another partition's flushed
/// shards.
fn stream(t: &TestEnv, txns: &[Transaction]) {
    let ingest = start_in_process(t);
    for slice in txns.chunks(50) {
        common::produce_demo(t, slice, Some(chrono::Duration::minutes(30)));
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = txns.len() as i64;
    let done = eventually(Duration::from_secs(90), || {
        log_rows(t, "user_txn") >= n
            && log_rows(t, "merchant_txn") >= n
            && t.raw_scalar("labels", "SELECT count(*) FROM raw") >= n
    });
    ingest.stop();
    assert!(done, "only {} log rows", log_rows(t, "user_txn"));
}

/// The whole log of a view, every column rendered, in (partition, offset) order.
fn log_dump(t: &TestEnv, view: &str) -> Vec<String> {
    let batches = log_query(
        t,
        view,
        "SELECT * EXCEPT (date) FROM log ORDER BY _partition, _offset",
    );
    let mut out = Vec::new();
    for b in &batches {
        for row in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| datafusion::arrow::util::display::array_value_to_string(c, row).unwrap())
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}

fn run(t: &TestEnv, args: &[&str], extra: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = t.quiver(args);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    common::run_quiver(cmd)
}

/// Runs `sql` over the named Parquet files or directories; its first row's two integers.
fn two_counts(tables: &[(&str, std::path::PathBuf)], sql: &str) -> (i64, i64) {
    let batches = common::runtime().block_on(async {
        let ctx = quiver_batch::session();
        for (name, path) in tables {
            ctx.register_parquet(*name, path.to_str().unwrap(), Default::default())
                .await
                .unwrap();
        }
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    });
    let int = |i: usize| {
        batches[0]
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    (int(0), int(1))
}

#[test]
fn backfill_reproduces_the_streaming_log_and_rebuilds_the_online_store() {
    let t = TestEnv::new(
        "backfill",
        &[
            ("QUIVER__INGEST__SEGMENT_MAX_EVENTS", "400"),
            ("QUIVER__INGEST__SEGMENT_MAX_AGE_MS", "50"),
        ],
    );
    t.create_topics();
    let txns = transactions(7, 6_000);
    stream(&t, &txns);

    // Merchants span partitions, so many rows carry other partitions' shards in their clock.
    let cross = log_query(
        &t,
        "merchant_txn",
        "SELECT count(*) FROM log WHERE _clock <> '{}'",
    );
    let cross = cross[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert!(cross > 1_000, "only {cross} cross-partition rows");

    // 1. Streaming and batch agree on every event and feature.
    let (ok, out) = run(&t, &["verify"], &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("view user_txn: 6000 events compared, 0 without"),
        "{out}"
    );
    assert!(
        out.contains("view merchant_txn: 6000 events compared, 0 without"),
        "{out}"
    );
    assert!(out.contains("agree on every compared event"), "{out}");

    // 2. A backfill rewrites the log with the same rows, and re-running it changes nothing.
    let before_user = log_dump(&t, "user_txn");
    let before_merchant = log_dump(&t, "merchant_txn");
    assert_eq!(before_user.len(), 6_000);
    for _ in 0..2 {
        let (ok, out) = run(&t, &["backfill"], &[]);
        assert!(ok, "{out}");
        assert!(out.contains("0 clock divergences"), "{out}");
        assert_eq!(log_dump(&t, "user_txn"), before_user);
        assert_eq!(log_dump(&t, "merchant_txn"), before_merchant);
    }
    // A range backfill touches only its segments and still leaves one row per event.
    let mid = txns[3_000].event_time.to_rfc3339();
    let end = txns[3_100].event_time.to_rfc3339();
    let (ok, out) = run(
        &t,
        &[
            "backfill", "--view", "user_txn", "--from", &mid, "--to", &end,
        ],
        &[],
    );
    assert!(ok, "{out}");
    assert_eq!(log_dump(&t, "user_txn"), before_user);

    // 3. `--materialize` into an empty key space answers exactly like the streaming store.
    let fresh = format!("{}-rebuilt", t.name);
    let (ok, out) = run(
        &t,
        &["backfill", "--materialize"],
        &[("QUIVER__REDIS__KEY_PREFIX", &fresh)],
    );
    assert!(ok, "{out}");
    assert!(out.contains("shards written to Redis"), "{out}");
    let streamed_api = common::start_api(&t, "");
    let mut rebuilt = t.config.clone();
    rebuilt.redis.key_prefix = fresh.clone();
    let rebuilt_api = {
        let addr = format!("127.0.0.1:{}", common::free_port());
        let mut config = rebuilt;
        config.api.listen = addr.clone();
        let views = t.views.clone();
        common::runtime().spawn(async move {
            quiver_serve::serve(&config, &views, std::future::pending()).await
        });
        assert!(eventually(Duration::from_secs(15), || {
            std::net::TcpStream::connect(&addr).is_ok()
        }));
        addr
    };
    let users: BTreeSet<&str> = txns.iter().map(|x| x.user_id.as_str()).collect();
    let merchants: BTreeSet<&str> = txns.iter().map(|x| x.merchant_id.as_str()).collect();
    let mut compared = 0;
    for (view, entities) in [("user_txn", &users), ("merchant_txn", &merchants)] {
        for entity in entities.iter() {
            let path = format!("/v1/features/{view}/{entity}");
            let (s1, a) = http(&streamed_api, "GET", &path, None, &[]);
            let (s2, b) = http(&rebuilt_api, "GET", &path, None, &[]);
            assert_eq!((s1, s2), (200, 200), "{path}");
            assert_eq!(a["features"], b["features"], "{path}");
            assert_eq!(a["event_time_max"], b["event_time_max"], "{path}");
            compared += 1;
        }
    }
    assert!(compared > 250, "{compared}");

    // 4. A changed definition is caught: `verify` names the feature and exits non-zero.
    let schemas = t.dir.join("schemas-changed");
    common::copy_dir(&t.config.schemas.dir, &schemas);
    let user_view = schemas.join("views").join("user_txn.toml");
    let text = std::fs::read_to_string(&user_view).unwrap();
    let changed = text.replacen(
        "name = \"txn_count_1h\"\nop = \"count\"\nwindow = \"1h\"",
        "name = \"txn_count_1h\"\nop = \"count\"\nwindow = \"2h\"",
        1,
    );
    assert_ne!(changed, text);
    std::fs::write(&user_view, changed).unwrap();
    let (ok, out) = run(
        &t,
        &["verify", "--view", "user_txn"],
        &[("QUIVER__SCHEMAS__DIR", schemas.to_str().unwrap())],
    );
    assert!(!ok, "{out}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_default()
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no line for {name}: {out}"))
    };
    assert!(line("txn_count_1h") > 0, "{out}");
    assert_eq!(line("amount_sum_1h"), 0, "{out}");
    assert!(out.contains("example txn_count_1h"), "{out}");

    // 5. Training rows of `labels` (joined by txn_id) equal the log row of their transaction:
    // a user's events are in one partition and in time order here.
    let out_dir = t.dir.join("dataset");
    let (ok, out) = run(
        &t,
        &[
            "dataset",
            "build",
            "--labels",
            "labels",
            "--views",
            "user_txn",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{out}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["train"]["rows"].as_u64().unwrap() + manifest["test"]["rows"].as_u64().unwrap(),
        6_000
    );
    assert_eq!(manifest["label_column"], "is_fraud");
    assert!(manifest["test"]["time_min"].as_str() >= manifest["train"]["time_max"].as_str());
    let (n, same) = two_counts(
        &[
            ("train", out_dir.join("train.parquet")),
            ("log", t.config.store.dir.join("offline/user_txn/")),
        ],
        "SELECT count(*) AS n, \
           sum(CASE WHEN d.user_txn__txn_count_1h = l.txn_count_1h \
                     AND d.user_txn__amount_max_24h = l.amount_max_24h \
                     AND d.user_txn__txn_count_lifetime = l.txn_count_lifetime \
                     AND d.user_txn__last_country = l.last_country \
                     AND abs(d.user_txn__amount_sum_1h - l.amount_sum_1h) <= 1e-9 * abs(l.amount_sum_1h) \
                THEN 1 ELSE 0 END) AS same \
         FROM train d JOIN log l ON d.txn_id = l.txn_id",
    );
    assert_eq!(n, manifest["train"]["rows"].as_u64().unwrap() as i64);
    assert_eq!(
        same, n,
        "training rows differ from the log rows of their events"
    );

    // With `--vectors logged`, every feature of every row is the vector the worker logged for
    // the event — merchant features too, which read other partitions' shards as they stood.
    let logged_dir = t.dir.join("dataset-logged");
    let (ok, out) = run(
        &t,
        &[
            "dataset",
            "build",
            "--labels",
            "labels",
            "--vectors",
            "logged",
            "--out",
            logged_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok && out.contains("(logged)"), "{out}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(logged_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["vectors"], "logged");
    assert_eq!(manifest["unlogged_labels"], 0);
    let rows =
        manifest["train"]["rows"].as_u64().unwrap() + manifest["test"]["rows"].as_u64().unwrap();
    assert_eq!(rows, 6_000);
    let counts = two_counts(
        &[
            ("train", logged_dir.join("train.parquet")),
            ("test", logged_dir.join("test.parquet")),
            (
                "merchant_log",
                t.config.store.dir.join("offline/merchant_txn/"),
            ),
        ],
        "SELECT count(*) AS n, \
           sum(CASE WHEN d.merchant_txn__txn_count_1h = l.txn_count_1h \
                     AND d.merchant_txn__distinct_users_24h = l.distinct_users_24h \
                     AND d.merchant_txn__amount_sum_24h = l.amount_sum_24h \
                THEN 1 ELSE 0 END) AS same \
         FROM (SELECT * FROM train UNION ALL SELECT * FROM test) d \
         JOIN merchant_log l ON d.txn_id = l.txn_id",
    );
    assert_eq!(counts, (6_000, 6_000), "logged vectors differ from the log");
}

#[test]
fn a_training_row_never_sees_an_event_after_its_time() {
    let t = TestEnv::new("pit", &[]);
    t.create_topics();
    let t0 = 1_795_687_200_000_000i64;
    let at = |off: i64| {
        DateTime::<Utc>::from_timestamp_micros(t0 + off)
            .unwrap()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    };
    // Arrival order: 0, +10 min, +20 min, then +7 min (out of order, within lateness).
    let events = [
        ("p1", "m1", 0, 10.0),
        ("p1", "m2", 10 * MIN, 1000.0),
        ("p1", "m1", 20 * MIN, 5.0),
        ("p1", "m3", 7 * MIN, 3.0),
        ("p2", "m1", 30 * MIN, 8.0),
    ];
    let msgs: Vec<(String, Vec<u8>)> = events
        .iter()
        .enumerate()
        .map(|(i, (user, merchant, off, amount))| {
            let payload = json!({"txn_id": format!("x{i}"), "user_id": user, "merchant_id": merchant,
                                 "amount": amount, "country": "FR", "event_time": at(*off)});
            (user.to_string(), payload.to_string().into_bytes())
        })
        .collect();
    produce_all(&services().kafka, &t.topic("transactions"), &msgs);
    let ingest = start_in_process(&t);
    assert!(eventually(Duration::from_secs(60), || {
        ingest.stats.features_applied.load(Ordering::Relaxed) >= 10
    }));
    ingest.stop();

    // Labels between events: (user, time, merchant for the merchant view).
    let labels = [
        ("p1", "m1", 5 * MIN),  // sees the first event only
        ("p1", "m1", 8 * MIN),  // + the late-arriving +7 min event
        ("p1", "m1", 10 * MIN), // + the +10 min event (an event exactly at T counts)
        ("p1", "m1", 15 * MIN), // same as +10 min
        ("p2", "m1", 29 * MIN), // p2's only event is a minute later: nothing
        ("p9", "m9", 5 * MIN),  // an entity without events
    ];
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("merchant_id", DataType::Utf8, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("chargeback", DataType::Boolean, false),
        Field::new("note", DataType::Boolean, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(labels.iter().map(|l| l.0))),
            Arc::new(StringArray::from_iter_values(labels.iter().map(|l| l.1))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(labels.iter().map(|l| t0 + l.2))
                    .with_timezone("UTC"),
            ),
            Arc::new(BooleanArray::from(vec![
                true, false, true, false, true, false,
            ])),
            Arc::new(BooleanArray::from(vec![false; 6])),
        ],
    )
    .unwrap();
    let labels_path = t.dir.join("labels.parquet");
    let file = std::fs::File::create(&labels_path).unwrap();
    let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    // Two boolean columns: the label must be named.
    let out_dir = t.dir.join("pit");
    let base = [
        "dataset",
        "build",
        "--labels",
        labels_path.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--test-fraction",
        "0",
    ];
    let (ok, out) = run(&t, &base, &[]);
    assert!(!ok && out.contains("--label-column"), "{out}");
    let mut args = base.to_vec();
    args.extend(["--label-column", "chargeback"]);
    let (ok, out) = run(&t, &args, &[]);
    assert!(ok, "{out}");

    let rows = common::runtime().block_on(async {
        let ctx = quiver_batch::session();
        ctx.register_parquet(
            "d",
            out_dir.join("train.parquet").to_str().unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
        ctx.sql(
            "SELECT user_id, user_txn__txn_count_1h, user_txn__amount_sum_1h, \
                    user_txn__amount_max_24h, user_txn__amount_mean_24h, \
                    merchant_txn__txn_count_1h, chargeback \
             FROM d ORDER BY user_id, event_time",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
    });
    let b = &rows[0];
    let count = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
    let sum = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
    let max = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
    let mean = b.column(4).as_any().downcast_ref::<Float64Array>().unwrap();
    let merchant = b.column(5).as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(b.num_rows(), 6);
    // p1 at +5, +8, +10, +15 min; p2 at +29 min; p9.
    assert_eq!(
        (0..6).map(|r| count.value(r)).collect::<Vec<_>>(),
        [1, 2, 3, 3, 0, 0]
    );
    assert_eq!(
        (0..6).map(|r| sum.value(r)).collect::<Vec<_>>(),
        [10.0, 13.0, 1013.0, 1013.0, 0.0, 0.0]
    );
    assert_eq!(
        max.value(0),
        10.0,
        "the 1000.0 at +10 min must not leak into +5 min"
    );
    assert_eq!(max.value(1), 10.0);
    assert_eq!(max.value(2), 1000.0);
    assert!(mean.is_null(4) && mean.is_null(5), "empty windows are null");
    // Merchant m1 at +5 min: only the first event (the +20 min one is in the future).
    assert_eq!(merchant.value(0), 1);
    // Merchant m1 at +29 min from p2's row: events at 0 and +20 min, within 1 h.
    assert_eq!(merchant.value(4), 2);
    let labels_out = b.column(6).as_any().downcast_ref::<BooleanArray>().unwrap();
    assert!(labels_out.value(0) && !labels_out.value(1));
}

/// Segments of a stream of the raw store, the feature log or the score store.
fn segment_count(t: &TestEnv, table: quiver_store::Table, stream: &str) -> usize {
    quiver_store::SegmentStore::open(&t.config.store.dir, table)
        .unwrap()
        .segments(stream)
        .unwrap()
        .len()
}

fn compact_at(t: &TestEnv, config: &quiver_core::Config, days_ahead: i64) -> String {
    let options = quiver_batch::compact::CompactOptions {
        dry_run: false,
        now: Utc::now() + chrono::Duration::days(days_ahead),
    };
    let lines = std::sync::Mutex::new(Vec::new());
    quiver_batch::compact::compact(config, &t.catalog, &t.views, options, &|s| {
        lines.lock().unwrap().push(s.line(false));
    })
    .unwrap();
    lines.into_inner().unwrap().join("\n")
}

#[test]
fn compaction_merges_and_retention_removes_without_breaking_verify_or_the_worker() {
    use quiver_store::Table;
    let t = TestEnv::new(
        "compact",
        &[
            ("QUIVER__INGEST__SEGMENT_MAX_EVENTS", "200"),
            ("QUIVER__INGEST__SEGMENT_MAX_AGE_MS", "50"),
        ],
    );
    t.create_topics();
    // Event times in the past (the worker refuses events from the future): 3 000 events 911 ms
    // apart five days ago, then (below) 1 000 a minute apart from two days ago.
    let options = GeneratorOptions {
        users: 200,
        ..GeneratorOptions::default()
    };
    let now = DateTime::<Utc>::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let first = common::stream::demo_transactions_from(
        11,
        options.clone(),
        now - chrono::Duration::days(5),
        911,
        0,
        3_000,
    );
    // With a malformed event after every 50 (dead letters: rejected offsets inside segments
    // and at their ends, which merged segments must keep apart as before).
    let ingest = start_in_process(&t);
    for slice in first.chunks(50) {
        common::produce_demo(&t, slice, Some(chrono::Duration::minutes(30)));
        produce_all(
            &services().kafka,
            &t.topic("transactions"),
            &[("u-bad".to_string(), b"not json".to_vec())],
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(eventually(Duration::from_secs(90), || {
        log_rows(&t, "user_txn") >= 3_000 && log_rows(&t, "merchant_txn") >= 3_000
    }));
    ingest.stop();
    let raw_before = segment_count(&t, Table::Raw, "transactions");
    let log_before = segment_count(&t, Table::FeatureLog, "user_txn");
    assert!(raw_before > 15, "only {raw_before} raw segments");
    let durable: Vec<i64> = (0..3)
        .map(|p| {
            quiver_store::SegmentStore::open(&t.config.store.dir, Table::Raw)
                .unwrap()
                .tail("transactions", p, 0)
                .unwrap()
                .durable
        })
        .collect();

    // Nothing of today is merged (a reader may be tailing it) and nothing expires.
    let (ok, out) = run(&t, &["store", "compact", "--dry-run"], &[]);
    assert!(ok && out.contains("dry run, nothing changed"), "{out}");
    let (ok, out) = run(&t, &["store", "compact"], &[]);
    assert!(ok && out.contains("0 merged into 0"), "{out}");
    assert_eq!(segment_count(&t, Table::Raw, "transactions"), raw_before);

    // Three days on, today's segments are old enough to merge: fewer files, the same rows,
    // and streaming and batch still agree event by event.
    let lines = compact_at(&t, &t.config, 3);
    let raw_after = segment_count(&t, Table::Raw, "transactions");
    eprintln!("raw segments {raw_before} -> {raw_after}; log {log_before}:\n{lines}");
    assert!(
        raw_after <= 6,
        "{raw_after} raw segments after merging:\n{lines}"
    );
    assert!(segment_count(&t, Table::FeatureLog, "user_txn") < log_before);
    assert_eq!(
        t.raw_scalar("transactions", "SELECT count(*) FROM raw"),
        3_000
    );
    assert_eq!(log_rows(&t, "user_txn"), 3_000);
    let (ok, out) = run(&t, &["verify"], &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("view user_txn: 3000 events compared, 0 without"),
        "{out}"
    );
    assert!(
        out.contains("view merchant_txn: 3000 events compared, 0 without"),
        "{out}"
    );

    // Ten days on, a 5-day raw retention removes every raw segment; the checkpoints keep
    // where each partition stood, and a replay of removed offsets writes nothing.
    let mut config = t.config.clone();
    config.store.retention.raw = "5d".into();
    let lines = compact_at(&t, &config, 10);
    assert!(lines.contains("raw     transactions"), "{lines}");
    assert_eq!(segment_count(&t, Table::Raw, "transactions"), 0, "{lines}");
    let raw = quiver_store::SegmentStore::open(&t.config.store.dir, Table::Raw).unwrap();
    for (p, durable) in durable.iter().enumerate() {
        assert_eq!(
            raw.tail("transactions", p as i32, 0).unwrap().durable,
            *durable
        );
    }
    assert!(!raw.is_empty("transactions").unwrap());
    let replay = quiver_store::SegmentId {
        partition: 0,
        first_offset: 0,
        last_offset: durable[0],
    };
    let written = raw
        .append(
            "transactions",
            Utc::now().date_naive(),
            replay,
            &RecordBatch::new_empty(Arc::new(Schema::empty())),
        )
        .unwrap();
    assert!(written.is_empty(), "{written:?}");
    // A checkpoint lost after that is rebuilt with what retention removed (its copy).
    std::fs::remove_file(raw.stream_dir("transactions").join(".checkpoint-00000")).unwrap();
    assert_eq!(raw.tail("transactions", 0, 0).unwrap().durable, durable[0]);
    assert!(raw.dropped("transactions").unwrap().contains_key(&0));

    // The worker goes on after it; two days later in event time, verify compares the values
    // whose windows lie after the removed history and says which it cannot.
    let resumed = now - chrono::Duration::days(2) - chrono::Duration::seconds(3_000 * 60);
    let second = common::stream::demo_transactions_from(11, options, resumed, 60_000, 3_000, 1_000);
    let ingest = start_in_process(&t);
    for slice in second.chunks(50) {
        common::produce_demo(&t, slice, Some(chrono::Duration::minutes(30)));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(eventually(Duration::from_secs(90), || {
        log_rows(&t, "user_txn") >= 4_000 && log_rows(&t, "merchant_txn") >= 4_000
    }));
    ingest.stop();
    assert_eq!(
        t.raw_scalar("transactions", "SELECT count(*) FROM raw"),
        1_000
    );
    let (ok, out) = run(&t, &["verify"], &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("view user_txn: 1000 events compared, 0 without"),
        "{out}"
    );
    assert!(out.contains("retention removed raw events up to"), "{out}");
    let compared = |feature: &str| -> (u64, u64) {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{feature} ")))
            .unwrap_or_else(|| panic!("no line for {feature}:\n{out}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        (cells[1].parse().unwrap(), cells[4].parse().unwrap())
    };
    // A 1-hour window after the gap is compared; lifetime values never are.
    assert_eq!(compared("txn_count_1h"), (1_000, 0), "{out}");
    assert_eq!(compared("txn_count_lifetime"), (0, 1_000), "{out}");
    let (ok, out) = run(&t, &["backfill", "--view", "user_txn"], &[]);
    assert!(
        ok && out.contains("warning: retention removed raw events"),
        "{out}"
    );
}
