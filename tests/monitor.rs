//! Monitoring against real tansu and Redis: `quiver monitor report` over the stores, and the
//! live monitor (`quiver monitor run`) reading the predictions and labels topics — both give
//! the realised ROC AUC computed independently from the predictions topic and the labels, and
//! the live one publishes it as a metric and as rows of the `monitor` table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::checks::unique_predictions as predictions;
use common::child::{ChildWorker, admin_get, scrape, sigterm};
use common::stream::scored_transactions as transactions;
use common::{TestEnv, eventually, free_port, produce_all, services, start_in_process};
use quiver_demo::Transaction;

fn produce(t: &TestEnv, txns: &[Transaction], labels: bool) {
    common::produce_demo(t, txns, labels.then(chrono::Duration::zero));
}

fn quiver(t: &TestEnv, args: &[&str]) -> String {
    let (ok, text) = common::run_quiver(t.quiver(args));
    assert!(ok, "quiver {args:?}: {text}");
    text
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
    let production = t.production_model();
    let r = reports
        .iter()
        .find(|r| r["model_id"] == production.as_str())
        .unwrap_or_else(|| panic!("no report for {production}: {out}"));
    assert_eq!(r["variant"], "production");
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
    let admin = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(t.dir.join("monitor.log")).unwrap();
    let child = t
        .quiver(&["monitor", "run"])
        .env("QUIVER__MONITOR__ADMIN_LISTEN", &admin)
        .env("QUIVER__MONITOR__INTERVAL", "1s")
        .env("QUIVER__MONITOR__WINDOW", "10m")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // Killed on drop if the test fails half-way.
    let mut monitor = ChildWorker {
        child,
        admin: admin.clone(),
    };
    assert!(
        eventually(Duration::from_secs(30), || admin_get(&admin, "/readyz").0
            == 200),
        "the monitor never got ready"
    );

    let txns = transactions(62, 0, 2_000);
    produce(&t, &txns, true);
    // Garbage among the labels is counted and skipped.
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
    assert!(
        sample(
            &metrics,
            "quiver_monitor_messages_total",
            &["result=\"unreadable\""]
        ) == Some(1.0),
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

    let status = sigterm(&mut monitor.child);
    assert!(status.success(), "the monitor stops cleanly on SIGTERM");

    // A restarted monitor keeps no state: it reads its window again from the topics.
    let again = ChildWorker {
        child: t
            .quiver(&["monitor", "run"])
            .env("QUIVER__MONITOR__ADMIN_LISTEN", &admin)
            .env("QUIVER__MONITOR__INTERVAL", "1s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        admin: admin.clone(),
    };
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
