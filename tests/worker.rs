//! The one streaming worker against real tansu and Redis, with a model deployed from the first
//! event: every event gets exactly one decision, scored with the very vector logged for it,
//! through a SIGKILL of one of two workers, a restart behind a backlog, a member that loses its
//! partitions while frozen, and events that cannot be scored; and the claim protocol itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::checks::{
    assert_exactly_once, assert_features_exact, assert_segments_never_overlap, predictions_by_id,
};
use common::child::{admin_get, scrape, signal, sigterm, spawn_worker};
use common::stream::{assert_one_decision_per_event, stream, transactions};
use common::{TestEnv, eventually, read_topic, run_quiver, services, start_in_process};
use quiver_demo::Transaction;

#[test]
fn two_workers_one_killed_every_event_gets_one_decision_with_its_logged_vector() {
    let t = TestEnv::new(
        "kill",
        &[
            ("QUIVER__INGEST__SEGMENT_MAX_AGE_MS", "200"),
            ("QUIVER__INGEST__SEGMENT_MAX_EVENTS", "1000"),
        ],
    );
    t.create_topics();
    t.deploy_model();
    let txns = transactions(41, 0, 20_000);
    let mut a = spawn_worker(&t, &[]);
    let mut b = spawn_worker(&t, &[]);
    // Both members join before the stream starts, so each owns partitions when A is killed.
    assert!(eventually(Duration::from_secs(60), || {
        scrape(&a.admin, "quiver_ingest_assigned_partitions") > 0.0
            && scrape(&b.admin, "quiver_ingest_assigned_partitions") > 0.0
    }));
    let producer = stream(&t, &txns, 1_000);
    assert!(
        eventually(Duration::from_secs(60), || scrape(
            &a.admin,
            "quiver_predictions_total"
        ) > 1_500.0),
        "A predicted nothing"
    );
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let deliveries = producer.join().unwrap();
    assert!(eventually(Duration::from_secs(120), || {
        t.raw_scalar("transactions", "SELECT count(*) FROM raw") >= 20_000
    }));
    assert!(sigterm(&mut b.child).success());

    assert_one_decision_per_event(&t, &txns);
    assert_exactly_once(&t, 20_000);
    assert_segments_never_overlap(&t);
    assert_features_exact(&t, &txns, &deliveries);
}

#[test]
fn a_worker_restarted_behind_a_backlog_catches_up_without_waiting() {
    let t = TestEnv::new("backlog", &[]);
    t.create_topics();
    t.deploy_model();
    let first = transactions(43, 0, 5_000);
    common::produce_demo(&t, &first, None);
    let worker = start_in_process(&t);
    assert!(eventually(Duration::from_secs(60), || {
        worker.stats.predictions.load(Ordering::Relaxed) >= 5_000
    }));
    worker.stop();

    // 50 000 events arrive while no worker runs.
    let backlog = transactions(43, 5_000, 50_000);
    common::produce_demo(&t, &backlog, None);
    let started = Instant::now();
    let worker = start_in_process(&t);
    assert!(
        eventually(Duration::from_secs(300), || {
            worker.stats.predictions.load(Ordering::Relaxed) >= 50_000
        }),
        "{} of 50 000 predictions",
        worker.stats.predictions.load(Ordering::Relaxed)
    );
    // The rate is a benchmark's business (`quiver-loadtest drain`); here it is only reported.
    eprintln!(
        "backlog of 50 000 scored in {:.1} s (debug build, shared machine)",
        started.elapsed().as_secs_f64()
    );
    worker.stop();
    let all: Vec<Transaction> = first.iter().chain(&backlog).cloned().collect();
    assert_one_decision_per_event(&t, &all);
}

/// A copy of the production model under `id`, its estimator replaced by `estimator`, or its
/// `model.json` removed (`None`).
fn variant_of_production(t: &TestEnv, id: &str, estimator: Option<serde_json::Value>) {
    let models = t.config.store.dir.join("models");
    let from = models.join(t.production_model());
    let to = models.join(id);
    common::copy_dir(&from, &to);
    let rewrite = |file: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(file, v.to_string()).unwrap();
    };
    rewrite(&to.join("card.json"), &|v| v["id"] = id.into());
    match estimator {
        Some(estimator) => rewrite(&to.join("model.json"), &|v| {
            v["id"] = id.into();
            v["encoding"] = serde_json::json!({
                "inputs": [
                    {"kind": "numeric", "feature": "user_txn__txn_count_lifetime"},
                    {"kind": "numeric", "feature": "user_txn__txn_count_lifetime"}
                ],
                "mean": [0.0, 0.0],
                "scale": [1e-300, 1e-300]
            });
            v["estimator"] = estimator.clone();
        }),
        None => std::fs::remove_file(to.join("model.json")).unwrap(),
    }
}

#[test]
fn events_that_cannot_be_scored_go_to_the_dlq_and_the_rest_is_scored() {
    let t = TestEnv::new(
        "unscorable",
        &[("QUIVER__SCORE__RELOAD_INTERVAL_MS", "100")],
    );
    t.create_topics();
    t.deploy_model();
    // A model whose score is NaN for every event (inf − inf), and one whose file is gone.
    variant_of_production(
        &t,
        "lr-nan",
        Some(
            serde_json::json!({"kind": "logistic_regression", "weights": [1e300, -1e300], "intercept": 0.0}),
        ),
    );
    variant_of_production(&t, "lr-gone", None);
    let mut worker = spawn_worker(&t, &[]);
    assert!(eventually(Duration::from_secs(30), || admin_get(
        &worker.admin,
        "/readyz"
    )
    .0 == 200));

    let quiver = |args: &[&str]| {
        let (ok, text) = run_quiver(t.quiver(args));
        assert!(ok, "quiver {args:?}: {text}");
        std::thread::sleep(Duration::from_millis(600));
    };
    let batches: Vec<Vec<Transaction>> = (0..4).map(|i| transactions(47, i * 200, 200)).collect();
    let produce = |txns: &[Transaction], predicted: f64| {
        common::produce_demo(&t, txns, None);
        assert!(eventually(Duration::from_secs(60), || {
            scrape(&worker.admin, "quiver_ingest_events_total") >= predicted
        }));
    };
    produce(&batches[0], 200.0);
    quiver(&["models", "canary", "lr-nan", "--fraction", "1"]);
    produce(&batches[1], 400.0);
    quiver(&["models", "canary", "lr-gone", "--fraction", "1"]);
    produce(&batches[2], 600.0);
    quiver(&["models", "canary", "--clear"]);
    produce(&batches[3], 800.0);
    assert_eq!(
        admin_get(&worker.admin, "/readyz").0,
        200,
        "a healthy worker is ready"
    );

    let letters = read_topic(
        &services().kafka,
        &t.config.kafka.dlq_topic("transactions"),
        400,
        Duration::from_secs(60),
    );
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for letter in &letters {
        *reasons
            .entry(letter.headers["quiver.reason"].clone())
            .or_default() += 1;
        assert!(
            letter.headers["quiver.error"].contains("lr-"),
            "{:?}",
            letter.headers
        );
        let event: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
        assert!(
            event["txn_id"].is_string(),
            "the dead letter is the original event"
        );
    }
    assert_eq!(
        reasons,
        BTreeMap::from([
            ("model_unavailable".to_string(), 200),
            ("score_not_finite".to_string(), 200)
        ])
    );
    let scored: Vec<Transaction> = batches[0].iter().chain(&batches[3]).cloned().collect();
    let predictions = predictions_by_id(&t, scored.len(), Duration::from_secs(60));
    assert_eq!(
        predictions.len(),
        400,
        "only the scorable events have predictions"
    );
    assert!(scored.iter().all(|x| predictions.contains_key(&x.txn_id)));
    assert_eq!(
        scrape(&worker.admin, "quiver_ingest_dead_letters_total"),
        400.0
    );
    assert!(sigterm(&mut worker.child).success());
}

#[test]
fn a_member_that_lost_its_partitions_writes_nothing_for_them_after() {
    let t = TestEnv::new(
        "zombie",
        &[
            ("QUIVER__INGEST__SEGMENT_MAX_AGE_MS", "300"),
            ("QUIVER__INGEST__COMMIT_INTERVAL_MS", "300"),
        ],
    );
    t.create_topics();
    t.deploy_model();
    let txns = transactions(53, 0, 12_000);
    let mut a = spawn_worker(&t, &[]);
    let mut b = spawn_worker(&t, &[]);
    assert!(eventually(Duration::from_secs(60), || {
        scrape(&a.admin, "quiver_ingest_assigned_partitions") > 0.0
            && scrape(&b.admin, "quiver_ingest_assigned_partitions") > 0.0
    }));
    let producer = stream(&t, &txns, 600);
    assert!(eventually(Duration::from_secs(60), || {
        scrape(&a.admin, "quiver_predictions_total") > 1_000.0
    }));
    // A freezes in the middle of its work (its flushes, claims and predictions in flight) for
    // longer than the session timeout: the group gives its partitions to B. Then A wakes up.
    signal(&a.child, "STOP");
    assert!(
        eventually(Duration::from_secs(60), || {
            scrape(&b.admin, "quiver_ingest_assigned_partitions") >= 4.0
        }),
        "B never took A's partitions"
    );
    std::thread::sleep(Duration::from_secs(2));
    signal(&a.child, "CONT");
    let deliveries = producer.join().unwrap();
    assert!(eventually(Duration::from_secs(120), || {
        t.raw_scalar("transactions", "SELECT count(*) FROM raw") >= 12_000
    }));
    std::thread::sleep(Duration::from_secs(2));
    assert!(sigterm(&mut a.child).success());
    assert!(sigterm(&mut b.child).success());

    // Nothing A wrote late undid B's work: no overlapping segment, no shard rolled back (every
    // user's and merchant's state is exactly the reference), one decision per event.
    assert_segments_never_overlap(&t);
    assert_exactly_once(&t, 12_000);
    assert_features_exact(&t, &txns, &deliveries);
    assert_one_decision_per_event(&t, &txns);
}

/// The claim protocol on real Redis: the first claim of a range wins, an overlapping one gets
/// it back, and once the owner committed and deleted its claims, a late claim of those offsets
/// (a member that lost the partition without knowing yet) is refused, not recorded.
#[test]
fn a_claim_below_the_committed_floor_is_refused() {
    use quiver_online::{Claim, Floor, OnlineStore};
    let t = TestEnv::new("claimfloor", &[]);
    let mut store = OnlineStore::connect(
        &t.config.redis.url,
        &t.config.redis.key_prefix,
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .unwrap();
    let ttl = Duration::from_secs(60);
    assert_eq!(
        store.claim("transactions", 3, (10, 19), b"b", ttl).unwrap(),
        Claim::Recorded
    );
    assert_eq!(
        store.claim("transactions", 3, (15, 24), b"a", ttl).unwrap(),
        Claim::Clashed(vec![b"b".to_vec()])
    );
    // The owner commits offset 20 and deletes the claim of 10..=19.
    store
        .release_claims("transactions", 3, (20, Floor::Raise), &[(10, 19)], ttl)
        .unwrap();
    assert!(store.claims("transactions", 3).unwrap().is_empty());
    assert_eq!(
        store.claim("transactions", 3, (12, 19), b"a", ttl).unwrap(),
        Claim::Fenced
    );
    assert_eq!(
        store.claim("transactions", 3, (18, 22), b"a", ttl).unwrap(),
        Claim::Fenced
    );
    assert!(store.claims("transactions", 3).unwrap().is_empty());
    // After a commit the floor only rises; offsets past it are claimed as before.
    store
        .release_claims("transactions", 3, (5, Floor::Raise), &[], ttl)
        .unwrap();
    assert_eq!(
        store.claim("transactions", 3, (20, 29), b"b", ttl).unwrap(),
        Claim::Recorded
    );
    // An assignment from offsets that went back (a reset, a recreated topic) puts it down.
    store
        .release_claims("transactions", 3, (0, Floor::Set), &[(20, 29)], ttl)
        .unwrap();
    assert_eq!(
        store.claim("transactions", 3, (0, 9), b"c", ttl).unwrap(),
        Claim::Recorded
    );
    assert_eq!(
        store.claim("transactions", 4, (0, 9), b"b", ttl).unwrap(),
        Claim::Recorded,
        "each partition has its own floor"
    );
}
