//! Models and scoring in the streaming worker against real tansu and Redis: training is
//! reproducible for a seed; once a model is deployed every event gets exactly one prediction
//! with the deciding model's id and the very vector logged for the event (every view, merchant
//! included); promote / rollback switch a running worker's model, the canary takes its share,
//! a shadow rides along, and a malformed event yields no prediction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::checks::unique_predictions as predictions;
use common::{TestEnv, eventually, produce_all, services, start_in_process};
use quiver_demo::Transaction;

fn transactions(seed: u64, from: usize, n: usize) -> Vec<Transaction> {
    common::stream::scored_transactions(seed, from, n)
}

fn produce(t: &TestEnv, txns: &[Transaction], labels: bool) {
    common::produce_demo(t, txns, labels.then(chrono::Duration::zero));
}

use common::quiver_ok as quiver;

fn registered_id(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("registered "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no model registered: {text}"))
        .to_string()
}

#[test]
fn the_worker_scores_each_event_with_its_logged_vector_and_the_deployed_model() {
    let t = TestEnv::new("score", &[("QUIVER__SCORE__RELOAD_INTERVAL_MS", "100")]);
    t.create_topics();
    let history = transactions(5, 0, 3_000);
    produce(&t, &history, true);
    let worker = start_in_process(&t);
    assert!(eventually(Duration::from_secs(60), || {
        t.raw_scalar("labels", "SELECT count(*) FROM raw") >= 3_000
            && common::log_rows(&t, "user_txn") >= 3_000
    }));

    // Training: a fixed seed gives the same metrics twice.
    let ds = t.dir.join("ds");
    quiver(
        &t,
        &[
            "dataset",
            "build",
            "--labels",
            "labels",
            "--out",
            ds.to_str().unwrap(),
        ],
    );
    let a = quiver(
        &t,
        &["train", "--dataset", ds.to_str().unwrap(), "--promote"],
    );
    let a_id = registered_id(&a);
    let again = quiver(&t, &["train", "--dataset", ds.to_str().unwrap()]);
    let metrics = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("registered "))
            .unwrap()
            .split_once("):")
            .unwrap()
            .1
            .to_string()
    };
    assert_eq!(metrics(&a), metrics(&again), "same seed, same metrics");
    let card: serde_json::Value =
        serde_json::from_str(&quiver(&t, &["models", "show", &a_id])).unwrap();
    assert!(card["test"]["roc_auc"].as_f64().unwrap() > 0.7, "{card}");
    assert_eq!(card["features"].as_array().unwrap().len(), 12);
    let b = quiver(
        &t,
        &[
            "train",
            "--dataset",
            ds.to_str().unwrap(),
            "--model",
            "random_forest",
            "--trees",
            "8",
            "--seed",
            "7",
        ],
    );
    let b_id = registered_id(&b);
    assert!(quiver(&t, &["models", "list"]).contains(&format!("production: {a_id}")));

    // Before a model, events are ingested without predictions.
    assert_eq!(worker.stats.predictions.load(Ordering::Relaxed), 0);
    assert!(worker.stats.unscored.load(Ordering::Relaxed) >= 3_000);

    // Live events after the history, one malformed among them.
    std::thread::sleep(Duration::from_millis(300));
    let live = transactions(5, 3_000, 400);
    produce(&t, &live, false);
    produce_all(
        &services().kafka,
        &t.topic("transactions"),
        &[("u-x".to_string(), b"{not json".to_vec())],
    );
    let first = predictions(&t, 400);
    let ids: BTreeSet<&str> = first
        .iter()
        .map(|p| p["txn_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 400, "one prediction per live event");
    assert_eq!(of(&first, &live).len(), 400);
    assert!(first.iter().all(|p| p["model_id"] == a_id.as_str()));
    assert!(eventually(Duration::from_secs(30), || {
        worker.stats.dead_letters.load(Ordering::Relaxed) >= 1
    }));

    // The vector scored is the feature log's row of the event, for both views (the merchant's
    // spans partitions).
    ingest_wait(&t, 3_400);
    common::assert_features_are_log_rows(&t, &first);

    // Promote B without restarting the worker; then roll back to A.
    quiver(&t, &["models", "promote", &b_id]);
    std::thread::sleep(Duration::from_millis(500));
    let batch = transactions(5, 3_400, 100);
    produce(&t, &batch, false);
    let after = predictions(&t, 500);
    let newest = of(&after, &batch);
    assert_eq!(newest.len(), 100);
    assert!(
        newest.iter().all(|p| p["model_id"] == b_id.as_str()),
        "promote switched the model"
    );
    quiver(&t, &["models", "rollback"]);
    std::thread::sleep(Duration::from_millis(500));
    let batch = transactions(5, 3_500, 100);
    produce(&t, &batch, false);
    let after = predictions(&t, 600);
    let newest = of(&after, &batch);
    assert_eq!(newest.len(), 100);
    assert!(
        newest.iter().all(|p| p["model_id"] == a_id.as_str()),
        "rollback restored A"
    );

    // Canary: B decides about 30 % of events; A stays production.
    quiver(&t, &["models", "canary", &b_id, "--fraction", "0.3"]);
    std::thread::sleep(Duration::from_millis(500));
    let batch = transactions(5, 3_600, 1_000);
    produce(&t, &batch, false);
    let after = predictions(&t, 1_600);
    let newest = of(&after, &batch);
    assert_eq!(newest.len(), 1_000);
    let canary = newest
        .iter()
        .filter(|p| p["model_id"] == b_id.as_str())
        .count();
    assert!(
        (240..=360).contains(&canary),
        "canary share {canary} / 1000"
    );
    assert!(
        newest
            .iter()
            .all(|p| (p["variant"] == "canary") == (p["model_id"] == b_id.as_str()))
    );

    // Shadow: B scored alongside every event, A deciding.
    quiver(&t, &["models", "canary", "--clear"]);
    quiver(&t, &["models", "shadow", &b_id]);
    std::thread::sleep(Duration::from_millis(500));
    let batch = transactions(5, 4_600, 50);
    produce(&t, &batch, false);
    let after = predictions(&t, 1_650);
    let newest = of(&after, &batch);
    assert_eq!(newest.len(), 50);
    assert!(newest.iter().all(|p| p["model_id"] == a_id.as_str()
        && p["shadow"]["model_id"] == b_id.as_str()
        && p["shadow"]["score"].is_number()));

    // A grid, promoted only if it beats production on the same test split.
    let grid = quiver(
        &t,
        &[
            "train",
            "--dataset",
            ds.to_str().unwrap(),
            "--grid",
            "--promote-if-better",
        ],
    );
    assert_eq!(
        grid.matches("test ROC AUC").count(),
        5,
        "4 candidates + the registered one: {grid}"
    );
    assert!(grid.contains("on this test split"), "{grid}");

    worker.stop();

    // The score store holds every prediction, queryable as `scores`.
    let out = quiver(&t, &["sql", "SELECT count(DISTINCT txn_id) FROM scores"]);
    assert!(out.contains("1650"), "{out}");
}

/// The predictions of `batch`'s transactions.
fn of<'a>(all: &'a [serde_json::Value], batch: &[Transaction]) -> Vec<&'a serde_json::Value> {
    let ids: BTreeSet<&str> = batch.iter().map(|x| x.txn_id.as_str()).collect();
    all.iter()
        .filter(|p| ids.contains(p["txn_id"].as_str().unwrap()))
        .collect()
}

fn ingest_wait(t: &TestEnv, n: i64) {
    assert!(eventually(Duration::from_secs(60), || common::log_rows(
        t, "user_txn"
    ) >= n));
}

#[test]
fn a_trained_model_keeps_the_baseline_monitoring_compares_with() {
    // The shared registry was made by `quiver dataset build` and `quiver train --promote`.
    let store = common::trained_registry().parent().unwrap();
    let registry = quiver_models::Registry::open(store).unwrap();
    let id = registry.deployment().unwrap().production.unwrap();
    let card = registry.card(&id).unwrap();
    let baseline = registry
        .baseline(&id)
        .unwrap()
        .expect("a baseline beside the model");
    let names: Vec<&str> = baseline
        .features
        .iter()
        .map(|f| f.feature.as_str())
        .collect();
    assert_eq!(
        names, card.features,
        "one reference per input feature, in model order"
    );
    assert_eq!(
        baseline.rows as u64,
        card.dataset["train"]["rows"].as_u64().unwrap()
    );
    for feature in &baseline.features {
        match &feature.reference {
            quiver_models::baseline::Reference::Numeric(r) => {
                assert_eq!(r.count + r.missing, baseline.rows, "{}", feature.feature);
                assert!(r.sample.len() <= quiver_models::baseline::SAMPLE);
                assert_eq!(r.deciles.len(), 11, "{}", feature.feature);
            }
            quiver_models::baseline::Reference::Categorical(r) => {
                assert_eq!(r.count + r.missing, baseline.rows, "{}", feature.feature);
                assert_eq!(r.frequencies.values().sum::<usize>(), r.count);
            }
        }
    }
    assert!(
        baseline
            .features
            .iter()
            .any(|f| f.feature == "user_txn__last_country"
                && matches!(
                    f.reference,
                    quiver_models::baseline::Reference::Categorical(_)
                )),
        "the country is categorical"
    );
    // Scores out of sample: one per test row.
    assert_eq!(
        baseline.scores.count as u64,
        card.dataset["test"]["rows"].as_u64().unwrap()
    );
    assert!(
        baseline
            .scores
            .deciles
            .iter()
            .all(|s| (0.0..=1.0).contains(s))
    );
}
