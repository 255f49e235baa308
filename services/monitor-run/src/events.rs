//! Internal events: every metric and log line of the monitor, in one place, with the names
//! from `quiver_telemetry::names`. Nothing else in the monitor touches a metric.
#![allow(clippy::disallowed_macros)]

use metrics::{counter, gauge};
use quiver_monitor::ModelReport;
use quiver_telemetry::names;

/// A message read off `topic`: `ok`, `repeated` or `unreadable` (with why, logged).
pub(crate) fn message(topic: &str, result: &'static str, why: Option<&dyn std::fmt::Display>) {
    counter!(names::MONITOR_MESSAGES, "topic" => topic.to_string(), "result" => result)
        .increment(1);
    if let Some(why) = why {
        tracing::debug!(topic, %why, "monitor: message skipped");
    }
}

/// Labels joined to a model's predictions.
pub(crate) fn labels_joined(model_id: &str) {
    counter!(names::LABELS_JOINED, "model_id" => model_id.to_string()).increment(1);
}

/// One model's window, as gauges.
pub(crate) fn reported(r: &ModelReport) {
    let model = || r.model_id.clone();
    gauge!(names::MONITOR_WINDOW_PREDICTIONS, "model_id" => model(), "variant" => r.variant.clone())
        .set(r.served as f64);
    for d in &r.drift {
        gauge!(
            names::FEATURE_DRIFT_SCORE,
            "model_id" => model(),
            "feature" => d.feature.clone(),
            "test" => d.drift.test.as_str()
        )
        .set(d.drift.statistic);
        gauge!(names::FEATURE_DRIFTED, "model_id" => model(), "feature" => d.feature.clone())
            .set(f64::from(u8::from(d.drift.drifted)));
    }
    if let Some(share) = r.drift_share {
        gauge!(names::MODEL_DRIFT_SHARE, "model_id" => model()).set(share);
    }
    let performance = |metric: &'static str, kind: &'static str, value: f64| {
        gauge!(names::MODEL_PERFORMANCE, "model_id" => model(), "metric" => metric, "kind" => kind)
            .set(value);
    };
    for (kind, metrics) in [("realised", r.realised.as_ref()), ("test", Some(&r.test))] {
        if let Some(m) = metrics {
            performance("roc_auc", kind, m.roc_auc);
            performance("pr_auc", kind, m.pr_auc);
            performance("log_loss", kind, m.log_loss);
            performance("precision", kind, m.precision);
            performance("recall", kind, m.recall);
        }
    }
    if let Some(auc) = r.estimated_roc_auc {
        performance("roc_auc", "estimated", auc);
    }
}

/// When a deployed model entered its slot.
pub(crate) fn deployed(model_id: &str, variant: &str, at_seconds: f64) {
    gauge!(names::MODEL_DEPLOYED_TIMESTAMP, "model_id" => model_id.to_string(), "variant" => variant.to_string())
        .set(at_seconds);
}

/// An evaluation of the window.
pub(crate) fn evaluated(models: usize, pending: usize, error: Option<&dyn std::fmt::Display>) {
    gauge!(names::MONITOR_LABELS_PENDING).set(pending as f64);
    match error {
        None => {
            counter!(names::MONITOR_EVALUATIONS, "result" => "ok").increment(1);
            tracing::debug!(models, pending, "monitor: window evaluated");
        }
        Some(error) => {
            counter!(names::MONITOR_EVALUATIONS, "result" => "error").increment(1);
            tracing::warn!(%error, "monitor: evaluation failed; retried at the next interval");
        }
    }
}

/// A model that cannot be reported (not in the registry, no baseline).
pub(crate) fn unreportable(model_id: &str, why: &str) {
    tracing::warn!(model_id, why, "monitor: model not reported");
}

/// Where the monitor starts reading.
pub(crate) fn started(topics: &[String], from_ms: i64) {
    tracing::info!(?topics, from_ms, "monitor: reading predictions and labels");
}
