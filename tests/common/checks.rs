//! Assertions shared by the integration tests: exactly-once landing, features equal to the
//! brute-force reference, segments that never overlap, one decision per event id.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, Int64Array};
use quiver_demo::Transaction;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::reference::{self, Ev};
use super::{TestEnv, log_query, services};

/// The events as produced, with where they landed.
pub fn events(txns: &[Transaction], deliveries: &[(i32, i64)]) -> Vec<Ev> {
    txns.iter()
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
        .collect()
}

fn scalar(batches: &[datafusion::arrow::array::RecordBatch], column: usize) -> i64 {
    batches[0]
        .column(column)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

/// The online features of every user and merchant equal the reference at the latest event
/// time (so nothing was applied twice or lost), and each view's feature log has exactly one row
/// per event.
pub fn assert_features_exact(t: &TestEnv, txns: &[Transaction], deliveries: &[(i32, i64)]) {
    let events = events(txns, deliveries);
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
            let online = super::online_at(t, view_name, entity, at);
            let problems = reference::diff(
                &online,
                &reference::expected(view, &reference::kept(view, &events, entity, None), at),
            );
            assert!(problems.is_empty(), "{view_name}/{entity}: {problems:?}");
        }
        let rows = log_query(
            t,
            view_name,
            "SELECT count(*) AS n, count(DISTINCT _partition * 1000000000 + _offset) AS d FROM log",
        );
        assert_eq!(
            (scalar(&rows, 0), scalar(&rows, 1)),
            (events.len() as i64, events.len() as i64),
            "{view_name}: one log row per event"
        );
    }
}

/// The raw store holds `n` transactions, each once: `n` rows, `n` distinct ids, and no
/// (partition, offset) twice.
pub fn assert_exactly_once(t: &TestEnv, n: i64) {
    assert_eq!(t.raw_scalar("transactions", "SELECT count(*) FROM raw"), n);
    assert_eq!(
        t.raw_scalar("transactions", "SELECT count(DISTINCT txn_id) FROM raw"),
        n
    );
    assert_eq!(t.raw_scalar("transactions", DUPLICATES), 0);
}

/// Raw-store rows whose (partition, offset) appears twice.
pub const DUPLICATES: &str =
    "SELECT count(*) FROM (SELECT _partition, _offset FROM raw GROUP BY 1, 2 HAVING count(*) > 1)";

/// Segments of one partition never overlap, in any table: each offset is in exactly one file.
pub fn assert_segments_never_overlap(t: &TestEnv) {
    for (table, stream) in [
        (quiver_store::Table::Raw, "transactions"),
        (quiver_store::Table::FeatureLog, "user_txn"),
        (quiver_store::Table::FeatureLog, "merchant_txn"),
        (quiver_store::Table::Scores, "transactions"),
    ] {
        let store = quiver_store::SegmentStore::open(&t.config.store.dir, table).unwrap();
        let segs = store.segments(stream).unwrap();
        for pair in segs.windows(2) {
            if pair[0].id.partition == pair[1].id.partition {
                assert!(
                    pair[0].id.last_offset < pair[1].id.first_offset,
                    "{table:?}/{stream}: {:?} overlaps {:?}",
                    pair[0].id,
                    pair[1].id
                );
            }
        }
    }
}

/// Every prediction on the topic, read from the start until `ids` distinct event ids were seen
/// (and a quiet second after), grouped by event id. A replay may repeat a prediction: the
/// copies must be identical in model, variant, score, decision and features.
pub fn predictions_by_id(
    t: &TestEnv,
    ids: usize,
    timeout: Duration,
) -> BTreeMap<String, serde_json::Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &services().kafka)
        .set("group.id", format!("{}-predictions-{ids}", t.name))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    consumer.subscribe(&[&t.topic("predictions")]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut by_id: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                quiet_since = None;
                let p: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                let id = p["txn_id"].as_str().unwrap().to_string();
                if let Some(seen) = by_id.get(&id) {
                    for field in ["model_id", "variant", "score", "decision", "features"] {
                        assert_eq!(seen[field], p[field], "two different predictions for {id}");
                    }
                }
                by_id.insert(id, p);
            }
            _ => {
                if by_id.len() >= ids {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(1) {
                        break;
                    }
                }
            }
        }
    }
    by_id
}

/// No log file in the test's directory shows any of `secrets`.
pub fn assert_no_log_shows(t: &TestEnv, secrets: &[&str]) {
    for entry in std::fs::read_dir(&t.dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(&path).unwrap();
            for secret in secrets {
                assert!(!log.contains(secret), "{} shows a secret", path.display());
            }
        }
    }
}

/// One prediction per event id. A replay (e.g. after a rebalance) may deliver one twice: the
/// copies must be identical in model, score and decision.
pub fn unique_predictions(t: &TestEnv, expected: usize) -> Vec<serde_json::Value> {
    let all: Vec<serde_json::Value> = super::read_topic(
        &super::services().kafka,
        &t.topic("predictions"),
        expected,
        Duration::from_secs(60),
    )
    .into_iter()
    .map(|m| serde_json::from_slice(&m.payload).unwrap())
    .collect();
    let mut by_id: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for p in all {
        let id = p["txn_id"].as_str().unwrap().to_string();
        if let Some(seen) = by_id.get(&id) {
            for field in ["model_id", "score", "decision", "features"] {
                assert_eq!(seen[field], p[field], "two different predictions for {id}");
            }
        }
        by_id.insert(id, p);
    }
    by_id.into_values().collect()
}
