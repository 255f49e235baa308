//! A demo stream for the worker and fault tests: transactions over 2 000 users, produced at a
//! steady rate on a thread, and the one-decision-per-event check on its predictions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use quiver_demo::{Generator, GeneratorOptions, Transaction};

use super::checks::predictions_by_id;
use super::{TestEnv, assert_features_are_log_rows, producer, send_all, services};

/// Transactions `from..from + n` of the seeded demo stream over `options`, `step_ms` apart from
/// 2026-11-26T10:00:00Z (in the past, so no event is dated ahead of its ingest time).
pub fn demo_transactions(
    seed: u64,
    options: GeneratorOptions,
    step_ms: i64,
    from: usize,
    n: usize,
) -> Vec<Transaction> {
    let start = DateTime::<Utc>::from_timestamp(1_795_687_200, 0).unwrap();
    demo_transactions_from(seed, options, start, step_ms, from, n)
}

/// Transactions `from..from + n` of the seeded demo stream over `options`, `step_ms` apart from
/// `start`.
pub fn demo_transactions_from(
    seed: u64,
    options: GeneratorOptions,
    start: DateTime<Utc>,
    step_ms: i64,
    from: usize,
    n: usize,
) -> Vec<Transaction> {
    let mut g = Generator::new(seed, options);
    (0..from + n)
        .map(|i| g.next_transaction(start + chrono::Duration::milliseconds(i as i64 * step_ms)))
        .skip(from)
        .collect()
}

/// Transactions `from..from + n` of the worker tests' stream (2 000 users, 40 ms apart).
pub fn transactions(seed: u64, from: usize, n: usize) -> Vec<Transaction> {
    let options = GeneratorOptions {
        users: 2_000,
        ..GeneratorOptions::default()
    };
    demo_transactions(seed, options, 40, from, n)
}

/// Transactions `from..from + n` of the scoring tests' stream (150 users, 3 % fraud, 2 s apart):
/// enough of each class for a model and its metrics.
pub fn scored_transactions(seed: u64, from: usize, n: usize) -> Vec<Transaction> {
    let options = GeneratorOptions {
        users: 150,
        fraud_rate: 0.03,
        ..GeneratorOptions::default()
    };
    demo_transactions(seed, options, 2_000, from, n)
}

/// (key, payload) of each transaction, keyed by user.
pub fn messages(txns: &[Transaction]) -> Vec<(String, Vec<u8>)> {
    txns.iter()
        .map(|t| (t.user_id.clone(), t.to_json().into_bytes()))
        .collect()
}

/// Produces `txns` at `per_second` events a second on a thread, like live traffic (a slice
/// every 50 ms); returns the deliveries.
pub fn stream(
    t: &TestEnv,
    txns: &[Transaction],
    per_second: usize,
) -> std::thread::JoinHandle<Vec<(i32, i64)>> {
    const TICK: Duration = Duration::from_millis(50);
    let (kafka, topic, msgs) = (
        services().kafka.clone(),
        t.topic("transactions"),
        messages(txns),
    );
    let per_tick = (per_second / 20).max(1);
    std::thread::spawn(move || {
        let producer = producer(&kafka);
        let started = Instant::now();
        let mut deliveries = Vec::with_capacity(msgs.len());
        for (i, slice) in msgs.chunks(per_tick).enumerate() {
            deliveries.extend(send_all(&producer, &topic, slice));
            let next = started + TICK * (i as u32 + 1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        deliveries
    })
}

/// Every event has exactly one prediction (copies identical), by the deployed model, with the
/// event's feature-log rows as features.
pub fn assert_one_decision_per_event(
    t: &TestEnv,
    txns: &[Transaction],
) -> BTreeMap<String, serde_json::Value> {
    let predictions = predictions_by_id(t, txns.len(), Duration::from_secs(120));
    let ids: BTreeSet<&str> = txns.iter().map(|x| x.txn_id.as_str()).collect();
    let missing: Vec<&&str> = ids
        .iter()
        .filter(|id| !predictions.contains_key(**id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "events without a prediction, e.g. {missing:?}"
    );
    assert_eq!(
        predictions.len(),
        txns.len(),
        "predictions for unknown events"
    );
    let model = t.production_model();
    assert!(
        predictions
            .values()
            .all(|p| p["model_id"] == model.as_str())
    );
    let all: Vec<serde_json::Value> = predictions.values().cloned().collect();
    assert_features_are_log_rows(t, &all);
    predictions
}
