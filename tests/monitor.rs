//! Monitoring against real tansu and Redis: `quiver monitor report` over the stores, and the
//! live monitor (`quiver monitor run`) tailing the score store and the labels' raw store — both give
//! the realised ROC AUC computed independently from the predictions topic and the labels, and
//! the live one publishes it as a metric and as rows of the `monitor` table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::checks::unique_predictions as predictions;
use common::child::{ChildWorker, admin_get, scrape, sigterm, spawn_monitor};
use common::stream::scored_transactions as transactions;
use common::{TestEnv, eventually, produce_all, services, start_in_process};
use quiver_demo::Transaction;

fn produce(t: &TestEnv, txns: &[Transaction], labels: bool) {
    common::produce_demo(t, txns, labels.then(chrono::Duration::zero));
}

use common::quiver_ok as quiver;

/// `quiver monitor run` for `t`, ready (its `/readyz` answers 200).
fn spawn_ready_monitor(t: &TestEnv, extra: &[(&str, &str)]) -> ChildWorker {
    let monitor = spawn_monitor(t, extra);
    assert!(
        eventually(Duration::from_secs(30), || admin_get(
            &monitor.admin,
            "/readyz"
        )
        .0 == 200),
        "the monitor never got ready"
    );
    monitor
}

/// The ROC AUC of the predictions on the topic against the labels of `txns`, computed here.
fn independent_roc_auc(t: &TestEnv, txns: &[Transaction]) -> f64 {
    let fraud: BTreeMap<&str, bool> = txns
        .iter()
        .map(|x| (x.txn_id.as_str(), x.is_fraud))
        .collect();
    let (scores, labels): (Vec<f64>, Vec<bool>) = predictions(t, txns.len())
        .iter()
        .map(|p| {
            (
                p["score"].as_f64().unwrap(),
                fraud[p["txn_id"].as_str().unwrap()],
            )
        })
        .unzip();
    quiver_models::metrics::roc_auc(&scores, &labels)
}

/// The value of the one sample of `metric` whose labels include every one of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn monitor_report_gives_the_realised_auc_of_the_predictions_and_their_labels() {
    let t = TestEnv::new("monitor", &[]);
    t.create_topics();
    t.deploy_model();
    // The production model rides along as its own shadow too: reported under `shadow`.
    let production = t.production_model();
    quiver(&t, &["models", "shadow", &production]);
    let txns = transactions(61, 0, 2_000);
    produce(&t, &txns, true);
    let worker = start_in_process(&t);
    assert!(eventually(Duration::from_secs(90), || {
        worker.stats.predictions.load(Ordering::Relaxed) >= 2_000
            && t.raw_scalar("labels", "SELECT count(*) FROM raw") >= 2_000
    }));
    worker.stop();

    let out = quiver(
        &t,
        &[
            "monitor",
            "report",
            "--json",
            "--window",
            "1h",
            "--min-rows",
            "200",
        ],
    );
    let reports: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let r = reports
        .iter()
        .find(|r| r["model_id"] == production.as_str() && r["variant"] == "production")
        .unwrap_or_else(|| panic!("no report for {production}: {out}"));
    let shadow = reports
        .iter()
        .find(|r| r["variant"] == "shadow")
        .unwrap_or_else(|| panic!("no shadow report: {out}"));
    assert_eq!(shadow["served"], 2_000);
    assert_eq!(
        (
            shadow["realised"]["roc_auc"].as_f64(),
            shadow["positive_decisions"].as_u64()
        ),
        (
            r["realised"]["roc_auc"].as_f64(),
            r["positive_decisions"].as_u64()
        ),
        "the same model scores and decides the same as a shadow"
    );
    assert_eq!(r["variant"], "production");
    assert!(r["deployed_at"].is_string(), "when it was promoted: {r}");
    assert_eq!(r["served"], 2_000);
    assert_eq!(
        (r["labels_joined"].as_u64(), r["labels_pending"].as_u64()),
        (Some(2_000), Some(0))
    );

    // The realised ROC AUC is the one computed independently from the predictions topic and
    // the labels produced.
    let independent = independent_roc_auc(&t, &txns);
    let realised = r["realised"]["roc_auc"].as_f64().unwrap();
    assert!(
        (realised - independent).abs() < 1e-6,
        "{realised} vs {independent}"
    );
    let estimated = r["estimated_roc_auc"].as_f64().unwrap();
    eprintln!(
        "monitor: realised ROC AUC {realised:.4}, estimated {estimated:.4}, test {}",
        r["test"]["roc_auc"]
    );
    assert!(r["drift"].as_array().is_some_and(|d| !d.is_empty()), "{r}");

    // Text output, and a clear error for a bad window.
    let text = quiver(&t, &["monitor", "report", "--window", "1h"]);
    assert!(
        text.contains(&production) && text.contains("ROC AUC: realised"),
        "{text}"
    );
    let (ok, err) = common::run_quiver(t.quiver(&["monitor", "report", "--window", "ten"]));
    assert!(!ok && err.contains("window `ten`"), "{err}");
}

#[test]
fn the_live_monitor_publishes_each_models_window_as_metrics_and_monitor_rows() {
    let t = TestEnv::new("monitor-live", &[]);
    t.create_topics();
    t.deploy_model();
    let production = t.production_model();
    // Killed on drop if the test fails half-way.
    let mut monitor = spawn_ready_monitor(
        &t,
        &[
            ("QUIVER__MONITOR__INTERVAL", "1s"),
            ("QUIVER__MONITOR__WINDOW", "10m"),
        ],
    );
    let admin = monitor.admin.clone();

    let txns = transactions(62, 0, 2_000);
    produce(&t, &txns, true);
    // Garbage among the labels goes to the worker's dead-letter topic: the monitor reads only
    // what the worker stored.
    produce_all(
        &services().kafka,
        &t.topic("labels"),
        &[("k".to_string(), b"not a prediction".to_vec())],
    );
    let worker = start_in_process(&t);
    assert!(eventually(Duration::from_secs(90), || {
        worker.stats.predictions.load(Ordering::Relaxed) >= 2_000
    }));
    worker.stop();
    assert!(
        eventually(Duration::from_secs(60), || scrape(
            &admin,
            "quiver_labels_joined_total"
        ) >= 2_000.0),
        "labels joined: {}",
        scrape(&admin, "quiver_labels_joined_total")
    );
    // One evaluation after the last label.
    let evaluations = scrape(&admin, "quiver_monitor_evaluations_total");
    assert!(eventually(Duration::from_secs(10), || {
        scrape(&admin, "quiver_monitor_evaluations_total") > evaluations
    }));

    let metrics = admin_get(&admin, "/metrics").1;
    let model = format!("model_id=\"{production}\"");
    let realised = sample(
        &metrics,
        "quiver_model_performance",
        &[&model, "metric=\"roc_auc\"", "kind=\"realised\""],
    )
    .unwrap_or_else(|| panic!("no realised ROC AUC for {production}: {metrics}"));
    let estimated = sample(
        &metrics,
        "quiver_model_performance",
        &[&model, "metric=\"roc_auc\"", "kind=\"estimated\""],
    )
    .unwrap();
    let independent = independent_roc_auc(&t, &txns);
    eprintln!(
        "live monitor: realised {realised:.6}, estimated {estimated:.4}, independent {independent:.6}"
    );
    assert!(
        (realised - independent).abs() < 1e-6,
        "{realised} vs {independent}"
    );
    assert!(
        (estimated - realised).abs() < 0.05,
        "the estimate is within 0.05 of the realised ROC AUC: {estimated} vs {realised}"
    );
    assert_eq!(
        sample(&metrics, "quiver_monitor_window_predictions", &[&model]),
        Some(2_000.0)
    );
    assert!(
        sample(
            &metrics,
            "quiver_model_deployed_timestamp_seconds",
            &[&model, "variant=\"production\""]
        )
        .is_some_and(|t| t > 1.7e9),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "quiver_feature_drift_score",
            &[&model, "feature=\"user_txn__amount_sum_1h\""]
        )
        .is_some(),
        "{metrics}"
    );
    assert!(sample(&metrics, "quiver_model_drift_share", &[&model]).is_some());
    assert_eq!(
        sample(
            &metrics,
            "quiver_monitor_rows_total",
            &["stream=\"raw/labels\"", "result=\"ok\""]
        ),
        Some(2_000.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "quiver_monitor_rows_total",
            &["stream=\"scores/transactions\"", "result=\"ok\""]
        ),
        Some(2_000.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "quiver_monitor_rows_total",
            &["result=\"unreadable\""]
        )
        .is_none(),
        "{metrics}"
    );

    // The same figures are in the monitor table, one row per evaluation.
    let out = quiver(
        &t,
        &[
            "sql",
            &format!(
                "SELECT served, labels_joined, realised_roc_auc, deployed_at IS NOT NULL AS deployed \
                 FROM monitor WHERE model_id = '{production}' ORDER BY window_end DESC LIMIT 1"
            ),
        ],
    );
    assert!(out.contains("2000") && out.contains("true"), "{out}");
    assert!(out.contains(&format!("{:.6}", realised)[..6]), "{out}");
    // And each view's freshness: now − the latest event time of its feature log.
    let out = quiver(
        &t,
        &[
            "sql",
            "SELECT freshness FROM monitor ORDER BY window_end DESC LIMIT 1",
        ],
    );
    let json = &out[out.find('{').unwrap()..=out.rfind('}').unwrap()];
    let freshness: BTreeMap<String, f64> = serde_json::from_str(json).unwrap();
    assert_eq!(
        freshness.keys().map(String::as_str).collect::<Vec<_>>(),
        ["merchant_txn", "user_txn"],
        "{out}"
    );
    // The stream's events are dated in the past: its freshness is how long ago the last was.
    let latest = txns.iter().map(|x| x.event_time).max().unwrap();
    let expected = (chrono::Utc::now() - latest).num_milliseconds() as f64 / 1e3;
    assert!(
        freshness
            .values()
            .all(|s| (expected - 120.0..=expected).contains(s)),
        "{out} against {expected} s"
    );

    let status = sigterm(&mut monitor.child);
    assert!(status.success(), "the monitor stops cleanly on SIGTERM");

    // A restarted monitor keeps no state: it reads its window again from the stores.
    let again = spawn_ready_monitor(&t, &[("QUIVER__MONITOR__INTERVAL", "1s")]);
    assert!(
        eventually(Duration::from_secs(60), || {
            let metrics = admin_get(&again.admin, "/metrics").1;
            sample(&metrics, "quiver_monitor_window_predictions", &[&model]) == Some(2_000.0)
                && sample(
                    &metrics,
                    "quiver_model_performance",
                    &[&model, "metric=\"roc_auc\"", "kind=\"realised\""],
                )
                .is_some_and(|r| (r - independent).abs() < 1e-6)
        }),
        "the restarted monitor did not rebuild its window: {}",
        admin_get(&again.admin, "/metrics").1
    );
}

/// Views whose windows fill within a day of event time, so a stream 5 minutes apart is
/// stationary after its first 300 events: four numeric inputs and a categorical one (the
/// demo's views also have 7-day and lifetime windows, still filling long after).
const DRIFT_VIEWS: &str = r#"
name = "user_txn"
entity = "user_id"
source = "transactions"
allowed_lateness = "1h"
ttl = "30d"

[[features]]
name = "txn_count_1h"
op = "count"
window = "1h"

[[features]]
name = "amount_mean_24h"
op = "mean"
column = "amount"
window = "24h"

[[features]]
name = "amount_max_24h"
op = "max"
column = "amount"
window = "24h"

[[features]]
name = "distinct_merchants_24h"
op = "distinct_count"
column = "merchant_id"
window = "24h"

[[features]]
name = "last_country"
op = "last"
column = "country"
window = "lifetime"
"#;

/// Transactions 5 minutes apart ending now (5 000 card holders, each paying every couple of
/// weeks: a window's inputs are a fair sample of the population, not of a few busy users);
/// the world changes after `shift_after`.
fn shifting_stream(total: usize, shift_after: usize) -> Vec<Transaction> {
    let start = chrono::Utc::now() - chrono::Duration::minutes(5 * total as i64 + 60);
    let options = quiver_demo::GeneratorOptions {
        users: 5_000,
        fraud_rate: 0.03,
        shift_after: Some(shift_after as u64),
        ..quiver_demo::GeneratorOptions::default()
    };
    common::stream::demo_transactions_from(7, options, start, 300_000, 0, total)
}

/// A test env on [`DRIFT_VIEWS`] with a model trained (and promoted) on `train`, its
/// baseline with it.
fn trained_on(test: &str, train: &[Transaction]) -> TestEnv {
    let schemas = common::services()
        .dir
        .join(format!("{test}-schemas-{}", std::process::id()));
    std::fs::create_dir_all(schemas.join("views")).unwrap();
    common::copy_dir(
        std::path::Path::new("schemas/sources"),
        &schemas.join("sources"),
    );
    std::fs::write(schemas.join("views/user_txn.toml"), DRIFT_VIEWS).unwrap();
    let t = TestEnv::new(test, &[]).with_schemas(&schemas);
    t.create_topics();
    common::train_and_promote(&t, train, Duration::from_secs(120));
    t
}

#[test]
fn drift_is_flagged_on_the_shifted_inputs_only_and_never_before_the_shift() {
    const TRAIN: usize = 6_000;
    // 16 s of steady stream: room for five full steady windows even when a loaded machine
    // (CI's two cores running this file's tests at once) serves well below `RATE` for a while.
    const STEADY: usize = 32_000;
    // 12 s of shifted stream: a 4 s window lies wholly after the last steady prediction
    // with at least 5 000 rows even when the loaded machine falls behind `RATE` (8 000
    // shifted events, 4 s, left CI without any such window).
    const SHIFTED: usize = 24_000;
    const RATE: usize = 2_000;
    let txns = shifting_stream(TRAIN + STEADY + SHIFTED, TRAIN + STEADY);
    let (train, live) = txns.split_at(TRAIN);
    let (steady, shifted) = live.split_at(STEADY);
    let t = trained_on("drift", train);

    // The monitor over 4 s windows (about 8 000 predictions; drift only from 5 000: fewer
    // rows make the burst-driven `txn_count_1h` noisy against Evidently's 0.1), then the live
    // stream: steady, then shifted.
    let _monitor = spawn_ready_monitor(
        &t,
        &[
            ("QUIVER__MONITOR__WINDOW", "4s"),
            ("QUIVER__MONITOR__INTERVAL", "1s"),
            ("QUIVER__MONITOR__MIN_ROWS", "5000"),
        ],
    );
    let worker = start_in_process(&t);
    common::stream::stream(&t, steady, RATE).join().unwrap();
    assert!(
        eventually(Duration::from_secs(120), || {
            worker.stats.predictions.load(Ordering::Relaxed) >= STEADY as u64
        }),
        "{} of {STEADY} steady predictions after 120 s",
        worker.stats.predictions.load(Ordering::Relaxed)
    );
    common::stream::stream(&t, shifted, RATE).join().unwrap();
    assert!(
        eventually(Duration::from_secs(120), || {
            worker.stats.predictions.load(Ordering::Relaxed) >= (STEADY + SHIFTED) as u64
        }),
        "{} of {} predictions after 120 s",
        worker.stats.predictions.load(Ordering::Relaxed),
        STEADY + SHIFTED
    );
    // Two more windows for the last predictions.
    std::thread::sleep(Duration::from_secs(5));
    worker.stop();

    // When the last steady and the first shifted prediction were made.
    let shifted_ids: std::collections::BTreeSet<&str> =
        shifted.iter().map(|x| x.txn_id.as_str()).collect();
    let (mut last_steady, mut first_shifted) = (i64::MIN, i64::MAX);
    for p in predictions(&t, STEADY + SHIFTED) {
        let at = chrono::DateTime::parse_from_rfc3339(p["prediction_time"].as_str().unwrap())
            .unwrap()
            .timestamp_micros();
        if shifted_ids.contains(p["txn_id"].as_str().unwrap()) {
            first_shifted = first_shifted.min(at);
        } else {
            last_steady = last_steady.max(at);
        }
    }

    quiver(
        &t,
        &[
            "sql",
            "SELECT CAST(window_start AS BIGINT) AS s, CAST(window_end AS BIGINT) AS e, served, \
               drifted_features FROM monitor ORDER BY window_end",
            "--out",
            t.dir.join("monitor.csv").to_str().unwrap(),
        ],
    );
    let csv = std::fs::read_to_string(t.dir.join("monitor.csv")).unwrap();
    let mut steady_windows = 0;
    let mut shifted_windows = Vec::new();
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.splitn(4, ',').collect();
        let (s, e, served): (i64, i64, usize) = (
            fields[0].parse().unwrap(),
            fields[1].parse().unwrap(),
            fields[2].parse().unwrap(),
        );
        let drifted = fields[3].trim_matches('"');
        if served < 5_000 {
            continue;
        }
        let in_share: Vec<&str> = drifted.split(',').filter(|f| !f.is_empty()).collect();
        if e <= first_shifted {
            steady_windows += 1;
            assert!(
                in_share.is_empty(),
                "drift flagged before the shift: {line}"
            );
        } else if s > last_steady {
            shifted_windows.push((e, in_share.join(",")));
        }
    }
    eprintln!("drift: {steady_windows} steady windows, shifted: {shifted_windows:?}");
    assert!(steady_windows >= 5, "{csv}");
    let (first_end, flagged) = shifted_windows
        .first()
        .unwrap_or_else(|| panic!("a window after the shift: {csv}"));
    assert!(
        first_end - first_shifted <= 3 * 4_000_000,
        "flagged within three 4 s windows of the shift: {csv}"
    );
    assert_eq!(
        flagged, "user_txn__amount_mean_24h,user_txn__amount_max_24h,user_txn__last_country",
        "exactly the inputs of the shifted fields"
    );
}

#[test]
fn a_degraded_model_is_retrained_canaried_and_promoted_with_the_reasons_recorded() {
    const TRAIN: usize = 6_000;
    const STEADY: usize = 6_000;
    const SHIFTED: usize = 60_000;
    const RATE: usize = 2_000;
    let txns = shifting_stream(TRAIN + STEADY + SHIFTED, TRAIN + STEADY);
    let (train, live) = txns.split_at(TRAIN);
    let (steady, shifted) = live.split_at(STEADY);
    let t = trained_on("retrain", train);
    let first = t.production_model();

    let _monitor = spawn_ready_monitor(
        &t,
        &[
            ("QUIVER__MONITOR__WINDOW", "20s"),
            ("QUIVER__MONITOR__INTERVAL", "1s"),
            ("QUIVER__MONITOR__MIN_ROWS", "300"),
            ("QUIVER__MONITOR__RETRAIN__ENABLED", "true"),
            ("QUIVER__MONITOR__RETRAIN__AUTO_PROMOTE", "true"),
            ("QUIVER__MONITOR__RETRAIN__MIN_ROC_AUC", "0.8"),
            ("QUIVER__MONITOR__RETRAIN__FOR_WINDOWS", "2"),
            ("QUIVER__MONITOR__RETRAIN__CANARY_FRACTION", "0.5"),
            ("QUIVER__MONITOR__RETRAIN__CANARY_FOR", "3s"),
        ],
    );
    let worker = start_in_process(&t);
    let registry = quiver_models::Registry::open(&t.config.store.dir).unwrap();
    let promoted = || {
        registry
            .deployment()
            .unwrap()
            .timeline
            .iter()
            .any(|c| c.action == "promoted" && c.model_id != first)
    };
    // Transactions and their labels, a second at a time: steady, then shifted until the
    // policy has promoted a retrained model (or the shifted stream runs out).
    for (i, chunk) in steady.chunks(RATE).chain(shifted.chunks(RATE)).enumerate() {
        common::stream::stream(&t, chunk, RATE).join().unwrap();
        common::produce_demo_labels(&t, chunk);
        if i * RATE > STEADY && promoted() {
            break;
        }
    }
    assert!(
        eventually(Duration::from_secs(30), promoted),
        "no retrained model promoted: {:#?}",
        registry.deployment().unwrap().timeline
    );
    worker.stop();

    // The registry's history says what happened and why, in order.
    let timeline = registry.deployment().unwrap().timeline;
    let steps: Vec<(&str, &str)> = timeline
        .iter()
        .map(|c| (c.action.as_str(), c.model_id.as_str()))
        .collect();
    let candidate = t.production_model();
    assert_ne!(candidate, first);
    let at = |action: &str| {
        timeline
            .iter()
            .position(|c| c.action == action && c.model_id == candidate)
            .unwrap_or_else(|| panic!("no `{action}` of {candidate}: {steps:?}"))
    };
    assert!(
        at("retrained") < at("canary") && at("canary") < at("promoted"),
        "{steps:?}"
    );
    let retrained = &timeline[at("retrained")].reason;
    assert!(
        retrained.contains("realised ROC AUC") || retrained.contains("drift share"),
        "{retrained}"
    );
    assert!(
        timeline[at("canary")]
            .reason
            .contains("better on the recent test split")
    );
    assert!(
        timeline[at("promoted")]
            .reason
            .contains("canary without regression")
    );
    let card = registry.card(&candidate).unwrap();
    assert_eq!(&card.reason, retrained, "the card says why it was trained");
    eprintln!("retraining: {:#?}", &timeline[at("retrained")..]);
    // And the report shows it.
    let text = quiver(&t, &["monitor", "report", "--window", "1h"]);
    assert!(
        text.contains("deployment timeline") && text.contains(retrained.as_str()),
        "{text}"
    );
}
