//! Dashboards and alerts as code (`deploy/prometheus`, `deploy/grafana`): the Prometheus config
//! and alert rules pass `promtool check config` and the rules' own unit tests
//! (`promtool test rules`), every Grafana query is valid PromQL (checked by promtool as a
//! recording rule), and every metric the rules and the dashboard name is one Quiver emits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn promtool() -> PathBuf {
    common::installed("promtool")
}

fn run(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(Path::new(REPO).join("deploy/prometheus"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The metric names Quiver defines (`services/telemetry/src/names.rs`).
fn defined() -> BTreeSet<String> {
    let names =
        std::fs::read_to_string(Path::new(REPO).join("services/telemetry/src/names.rs")).unwrap();
    names
        .split('"')
        .filter(|s| s.len() > 7 && s.starts_with("quiver_") && !s.contains(' '))
        .map(String::from)
        .collect()
}

/// The `quiver_…` metric names a PromQL text uses (histogram series as their metric's name).
fn used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("quiver_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(base.to_string());
        i = end;
    }
    out
}

#[test]
fn the_prometheus_config_and_alert_rules_pass_promtool_and_their_tests() {
    let config = run(&["check", "config", "prometheus.yml"]);
    assert!(config.contains("SUCCESS"), "{config}");
    let tests = run(&["test", "rules", "alerts.test.yml"]);
    assert!(tests.contains("SUCCESS"), "{tests}");
    let rules =
        std::fs::read_to_string(Path::new(REPO).join("deploy/prometheus/alerts.yml")).unwrap();
    for alert in [
        "QuiverFeaturesStale",
        "QuiverDriftShareHigh",
        "QuiverRealisedAucDrop",
        "QuiverDeadLetterRate",
        "QuiverConsumerLag",
        "QuiverNotReady",
        "QuiverDown",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "{alert} missing"
        );
        assert!(
            std::fs::read_to_string(Path::new(REPO).join("deploy/prometheus/alerts.test.yml"))
                .unwrap()
                .contains(&format!("alertname: {alert}")),
            "{alert} has no test in alerts.test.yml"
        );
    }
    let unknown: Vec<String> = used(&rules).difference(&defined()).cloned().collect();
    assert!(
        unknown.is_empty(),
        "alerts on metrics Quiver does not emit: {unknown:?}"
    );
}

#[test]
fn every_grafana_query_is_valid_promql_on_metrics_quiver_emits() {
    let text = std::fs::read_to_string(Path::new(REPO).join("deploy/grafana/quiver.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut exprs = Vec::new();
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    // Each query as a recording rule: promtool parses it.
    let mut rules = String::from("groups:\n  - name: grafana\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: grafana_query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = std::env::temp_dir().join(format!("quiver-grafana-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("grafana.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let checked = run(&["check", "rules", file.to_str().unwrap()]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{checked}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let all: BTreeSet<String> = exprs.iter().flat_map(|e| used(e)).collect();
    let unknown: Vec<String> = all.difference(&defined()).cloned().collect();
    assert!(
        unknown.is_empty(),
        "dashboard queries unknown metrics: {unknown:?}"
    );
    // The panels the status of a deployment needs.
    for metric in [
        "quiver_feature_drift_score",
        "quiver_model_performance",
        "quiver_feature_freshness_seconds",
        "quiver_predictions_total",
        "quiver_prediction_latency_seconds",
        "quiver_model_deployed_timestamp_seconds",
    ] {
        assert!(all.contains(metric), "no panel shows {metric}");
    }
}
