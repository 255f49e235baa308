//! `quiver monitor run`: the live monitor of the deployed models. It reads the predictions topic
//! and the label source's topic from `monitor.window` (or `monitor.label_horizon`, the longer)
//! ago, joins labels to predictions by event id ([`quiver_monitor::Tracker`]), and every
//! `monitor.interval` reports each model's window against its training baseline
//! ([`quiver_monitor::report`]): as Prometheus gauges ([`events`]) and as rows of the `monitor`
//! table ([`history`]).
//!
//! It keeps no offsets: a restarted monitor reads its window again from the topics, so it needs
//! them to retain at least that much. It writes nothing but the monitor table.

mod consumer;
mod events;
pub mod history;
pub mod read;

use std::collections::BTreeMap;
use std::time::Duration;

use quiver_core::{Catalog, Config, Retry};
use quiver_features::ViewCatalog;
use quiver_models::Registry;
use quiver_models::baseline::Baseline;
use quiver_models::metrics::Metrics;
use quiver_monitor::report::{Settings, report};
use quiver_monitor::tracker::{Joined, Limits, Taken, Tracker};
use quiver_telemetry::Health;
use rdkafka::Message as _;
use rdkafka::message::BorrowedMessage;

use crate::read::Fields;

/// Result alias of `quiver-monitor-run`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the live monitor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration or the schemas do not allow monitoring.
    #[error("{0}")]
    Invalid(String),
    /// The broker refused or did not answer.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A message the monitor does not understand (skipped and counted, never fatal).
    #[error("unreadable: {0}")]
    Unreadable(String),
    /// The registry could not be read.
    #[error(transparent)]
    Registry(#[from] quiver_models::Error),
    /// The monitor table could not be written.
    #[error(transparent)]
    Store(#[from] quiver_store::Error),
    /// A batch of the monitor table did not build.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl Error {
    /// Whether retrying can help.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Kafka(_) => Retry::Transient,
            Error::Store(e) => e.retry(),
            Error::Registry(_) | Error::Invalid(_) | Error::Unreadable(_) | Error::Arrow(_) => {
                Retry::Permanent
            }
        }
    }
}

/// What a run of the monitor saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonitorSummary {
    /// Predictions taken in (replays not counted twice).
    pub predictions: u64,
    /// Labels read.
    pub labels: u64,
    /// Messages skipped as unreadable.
    pub unreadable: u64,
    /// Evaluations of the window.
    pub evaluations: u64,
}

/// A model's test-split metrics and training baseline, read once from the registry.
type Reference = Option<(Metrics, Baseline)>;

/// Runs the monitor until `stop` returns true.
pub fn run(
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
    health: &Health,
    stop: &dyn Fn() -> bool,
) -> Result<MonitorSummary> {
    let m = &config.monitor;
    let label_source = catalog.source(&m.labels).ok_or_else(|| {
        Error::Invalid(format!(
            "monitor.labels: no source `{}` to read labels from",
            m.labels
        ))
    })?;
    let label_id = label_source.id.clone().ok_or_else(|| {
        Error::Invalid(format!(
            "monitor.labels: source `{}` declares no event id to join predictions on",
            label_source.name
        ))
    })?;
    let named = (!m.label_column.is_empty()).then_some(m.label_column.as_str());
    let label = label_source
        .label_column(named)
        .map_err(|e| Error::Invalid(format!("monitor.label_column: {e}")))?;
    let fields = Fields {
        prediction_ids: catalog
            .sources
            .iter()
            .filter_map(|s| s.id.clone())
            .collect(),
        label_id,
        label,
    };
    let limits = Limits {
        window_us: m.window_us(),
        interval_us: m.interval_us(),
        label_horizon_us: m.label_horizon_us(),
        sample_rows: m.sample_rows,
    };
    let predictions_topic = config.kafka.topic(&config.score.predictions_topic);
    let labels_topic = config.kafka.topic(&label_source.topic);
    let now = now_us();
    let from_ms = (now - limits.window_us.max(limits.label_horizon_us)) / 1_000;
    let topics = [predictions_topic.clone(), labels_topic.clone()];
    let consumer = consumer::assigned(config, &topics, from_ms)?;
    events::started(&topics, from_ms);
    health.set_ready();

    let registry = Registry::open(&config.store.dir)?;
    let history = history::open(&config.store.dir)?;
    let settings = Settings {
        min_rows: m.min_rows,
        lifetime: views.lifetime_inputs(),
        ..Settings::default()
    };
    let mut state = State {
        from_ms,
        fields,
        predictions_topic,
        labels_topic,
        tracker: Tracker::new(limits),
        summary: MonitorSummary::default(),
    };
    let mut references: BTreeMap<String, Reference> = BTreeMap::new();
    let mut next = now + limits.interval_us;
    while !stop() {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            state.take(&message?);
        }
        let now = now_us();
        if now >= next {
            next = now + limits.interval_us;
            state.summary.evaluations += 1;
            let evaluated = evaluate(
                &mut state.tracker,
                &registry,
                &history,
                &settings,
                &mut references,
                now,
            );
            events::evaluated(
                evaluated.as_ref().map_or(0, |n| *n),
                state.tracker.pending(),
                evaluated
                    .as_ref()
                    .err()
                    .map(|e| e as &dyn std::fmt::Display),
            );
        }
    }
    Ok(state.summary)
}

/// What the loop keeps between messages.
struct State {
    /// Messages older than this (ms) are before the window: skipped.
    from_ms: i64,
    fields: Fields,
    predictions_topic: String,
    labels_topic: String,
    tracker: Tracker,
    summary: MonitorSummary,
}

impl State {
    /// Takes in one message of either topic; one it cannot read is counted and skipped.
    fn take(&mut self, message: &BorrowedMessage<'_>) {
        let topic = message.topic();
        let payload = message.payload().unwrap_or_default();
        let at_ms = message.timestamp().to_millis();
        if at_ms.is_some_and(|ms| ms < self.from_ms) {
            return;
        }
        if topic == self.predictions_topic {
            match read::prediction(&self.fields, payload) {
                Ok(seen) => match self.tracker.prediction(seen) {
                    Taken::Repeated => events::message(topic, "repeated", None),
                    taken => {
                        self.summary.predictions += 1;
                        events::message(topic, "ok", None);
                        if let Taken::Labelled(slots) = taken {
                            for slot in slots {
                                events::labels_joined(&slot.model_id);
                            }
                        }
                    }
                },
                Err(e) => {
                    self.summary.unreadable += 1;
                    events::message(topic, "unreadable", Some(&e));
                }
            }
        } else if topic == self.labels_topic {
            match read::label(&self.fields, payload) {
                Ok((id, label)) => {
                    self.summary.labels += 1;
                    events::message(topic, "ok", None);
                    let at_us = at_ms.map_or_else(now_us, |ms| ms * 1_000);
                    if let Joined::InWindow(slots) | Joined::PastWindow(slots) =
                        self.tracker.label(&id, label, at_us, now_us())
                    {
                        for slot in slots {
                            events::labels_joined(&slot.model_id);
                        }
                    }
                }
                Err(e) => {
                    self.summary.unreadable += 1;
                    events::message(topic, "unreadable", Some(&e));
                }
            }
        }
    }
}

/// Reports every model of the window ending `now`: gauges and a row each in the monitor table.
/// Returns how many models were reported.
fn evaluate(
    tracker: &mut Tracker,
    registry: &Registry,
    history: &quiver_store::SegmentStore,
    settings: &Settings,
    references: &mut BTreeMap<String, Reference>,
    now: i64,
) -> Result<usize> {
    tracker.expire(now);
    let deployment = registry.deployment()?;
    for (model, variant) in [
        (deployment.production.clone(), "production"),
        (deployment.canary.as_ref().map(|c| c.id.clone()), "canary"),
        (deployment.shadow.clone(), "shadow"),
    ] {
        if let Some(model) = model
            && let Some(at) = deployment.deployed_at(&model, variant)
            && let Ok(t) = chrono::DateTime::parse_from_rfc3339(at)
        {
            events::deployed(&model, variant, t.timestamp_millis() as f64 / 1_000.0);
        }
    }
    let mut reports = Vec::new();
    for (slot, window) in tracker.windows(now) {
        if !references.contains_key(&slot.model_id) {
            let reference = load_reference(registry, &slot.model_id)?;
            references.insert(slot.model_id.clone(), reference);
        }
        let Some(Some((test, baseline))) = references.get(&slot.model_id) else {
            continue;
        };
        let r = report(
            &slot.model_id,
            &slot.variant,
            baseline,
            test,
            &window,
            settings,
        );
        events::reported(&r);
        reports.push(r);
    }
    let rows: Vec<history::Row<'_>> = reports
        .iter()
        .map(|r| history::Row {
            report: r,
            deployed_at: deployment.deployed_at(&r.model_id, &r.variant),
        })
        .collect();
    history::append(history, tracker.window_start(now), now, &rows)?;
    Ok(reports.len())
}

/// A model's test metrics and baseline, or `None` (logged once) if it cannot be reported.
fn load_reference(registry: &Registry, model_id: &str) -> Result<Reference> {
    let card = match registry.card(model_id) {
        Ok(card) => card,
        Err(_) => {
            events::unreportable(model_id, "not in the registry");
            return Ok(None);
        }
    };
    match registry.baseline(model_id)? {
        Some(baseline) => Ok(Some((card.test, baseline))),
        None => {
            events::unreportable(
                model_id,
                "no training baseline (trained before baselines were kept)",
            );
            Ok(None)
        }
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
