//! Internal events: every metric and log line of the monitor, in one place, with the names
//! from `quiver_telemetry::names`. Nothing else in the monitor touches a metric.
#![allow(clippy::disallowed_macros)]

use metrics::{counter, gauge};
use quiver_monitor::ModelReport;
use quiver_telemetry::names;

/// One segment's rows read off `stream` (`scores/<source>` or `raw/<source>`), by result:
/// `ok`, `repeated`, `unreadable` (why the first was, logged), `skipped` (a label row without
/// an id or a label).
pub(crate) fn rows(stream: &str, counts: &crate::Counts) {
    for (result, n) in [
        ("ok", counts.ok),
        ("repeated", counts.repeated),
        ("unreadable", counts.unreadable),
        ("skipped", counts.skipped),
    ] {
        if n > 0 {
            counter!(names::MONITOR_ROWS, "stream" => stream.to_string(), "result" => result)
                .increment(n);
        }
    }
    if let Some(why) = &counts.why {
        tracing::debug!(stream, %why, unreadable = counts.unreadable, "monitor: rows skipped");
    }
}

/// Labels joined to a model's predictions.
pub(crate) fn labels_joined(model_id: &str, n: u64) {
    counter!(names::LABELS_JOINED, "model_id" => model_id.to_string()).increment(n);
}

/// A read of the stores that failed (retried at the next read).
pub(crate) fn read_error(error: &dyn std::fmt::Display) {
    counter!(names::MONITOR_ROWS, "stream" => "", "result" => "error").increment(1);
    tracing::warn!(%error, "monitor: reading the stores failed; retrying");
}

/// A restarted monitor goes on judging the candidate its policy had put on canary.
pub(crate) fn canary_resumed(model_id: &str) {
    tracing::info!(
        model_id,
        "monitor: judging the canary the retraining policy had put on before the restart"
    );
}

/// The window's backlog is read: evaluations start.
pub(crate) fn caught_up(predictions: u64, labels: u64) {
    tracing::info!(predictions, labels, "monitor: caught up with the window");
}

/// A model no longer in the window: its window gauges are blanked (NaN), not left showing its
/// last figures.
pub(crate) fn left_window(model_id: &str) {
    gauge!(names::MODEL_DRIFT_SHARE, "model_id" => model_id.to_string()).set(f64::NAN);
    for (metric, value) in performance_of(None) {
        performance(model_id, metric, "realised", value);
    }
    performance(model_id, "roc_auc", "estimated", f64::NAN);
}

/// `metrics` by their `metric` label (NaN without them).
fn performance_of(metrics: Option<&quiver_models::metrics::Metrics>) -> [(&'static str, f64); 5] {
    let value = |f: fn(&quiver_models::metrics::Metrics) -> f64| metrics.map_or(f64::NAN, f);
    [
        ("roc_auc", value(|m| m.roc_auc)),
        ("pr_auc", value(|m| m.pr_auc)),
        ("log_loss", value(|m| m.log_loss)),
        ("precision", value(|m| m.precision)),
        ("recall", value(|m| m.recall)),
    ]
}

/// One `quiver_model_performance` sample.
fn performance(model_id: &str, metric: &'static str, kind: &'static str, value: f64) {
    gauge!(names::MODEL_PERFORMANCE, "model_id" => model_id.to_string(), "metric" => metric, "kind" => kind)
        .set(value);
}

/// A drift series no longer measured (the model left the window, or the feature's test
/// changed): NaN rather than its last value.
pub(crate) fn drift_gone(model_id: &str, feature: &str, test: &'static str) {
    gauge!(
        names::FEATURE_DRIFT_SCORE,
        "model_id" => model_id.to_string(),
        "feature" => feature.to_string(),
        "test" => test
    )
    .set(f64::NAN);
}

/// One model's window, as gauges (a figure the window does not give is NaN).
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
    gauge!(names::MODEL_DRIFT_SHARE, "model_id" => model()).set(r.drift_share.unwrap_or(f64::NAN));
    for (kind, metrics) in [("realised", r.realised.as_ref()), ("test", Some(&r.test))] {
        for (metric, value) in performance_of(metrics) {
            performance(&r.model_id, metric, kind, value);
        }
    }
    let estimated = r.estimated_roc_auc.unwrap_or(f64::NAN);
    performance(&r.model_id, "roc_auc", "estimated", estimated);
}

/// A retraining job ended.
pub(crate) fn retrained(outcome: &quiver_monitor::retrain::Outcome) {
    use quiver_monitor::retrain::Outcome;
    match outcome {
        Outcome::Trained {
            model_id,
            candidate_roc_auc,
            production_roc_auc,
        } => {
            counter!(names::MONITOR_RETRAINS, "result" => "trained").increment(1);
            tracing::info!(
                model_id,
                candidate_roc_auc,
                production_roc_auc,
                "monitor: retrained a candidate (ROC AUC on the recent test split against production's)"
            );
        }
        Outcome::Failed { error } => {
            counter!(names::MONITOR_RETRAINS, "result" => "failed").increment(1);
            tracing::warn!(%error, "monitor: retraining failed");
        }
    }
}

/// A step the retraining policy took (and whether the registry took it).
pub(crate) fn retrain_step(action: &quiver_monitor::retrain::Action, error: Option<&str>) {
    use quiver_monitor::retrain::Action;
    let (step, model, reason) = match action {
        Action::Wait => return,
        Action::Retrain { reason, .. } => ("retrain", "", reason),
        Action::Canary {
            model_id, reason, ..
        } => ("canary", model_id.as_str(), reason),
        Action::Promote { model_id, reason } => ("promote", model_id.as_str(), reason),
        Action::Abandon { model_id, reason } => ("abandon", model_id.as_str(), reason),
    };
    match error {
        None => tracing::info!(
            step,
            model_id = model,
            reason = reason.as_str(),
            "monitor: retraining policy"
        ),
        Some(error) => tracing::warn!(
            step,
            model_id = model,
            reason = reason.as_str(),
            error,
            "monitor: retraining policy step failed"
        ),
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
pub(crate) fn started(streams: &[String], from_ms: i64) {
    tracing::info!(?streams, from_ms, "monitor: reading predictions and labels");
}
