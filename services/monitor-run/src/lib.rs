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
mod evaluate;
mod events;
pub mod history;
pub mod read;
mod retrain;

use std::time::Duration;

use quiver_core::{Catalog, Config, Retry};
use quiver_features::ViewCatalog;
use quiver_models::baseline::Baseline;
use quiver_models::metrics::Metrics;
use quiver_monitor::tracker::{Joined, Limits, Taken, Tracker};
use quiver_telemetry::Health;
use rdkafka::Message as _;
use rdkafka::message::BorrowedMessage;

use crate::evaluate::Evaluation;
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
    /// A row of the monitor table could not be made (a time out of range, a report that does
    /// not serialise).
    #[error("monitor table: {0}")]
    History(String),
}

impl Error {
    /// Whether retrying can help.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Kafka(_) => Retry::Transient,
            Error::Store(e) => e.retry(),
            Error::Registry(_)
            | Error::Invalid(_)
            | Error::Unreadable(_)
            | Error::Arrow(_)
            | Error::History(_) => Retry::Permanent,
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
    let limits = Limits {
        window_us: m.window_us(),
        interval_us: m.interval_us(),
        label_horizon_us: m.label_horizon_us(),
        sample_rows: m.sample_rows,
    };
    let from_ms = (now_us() - limits.window_us.max(limits.label_horizon_us)) / 1_000;
    let mut state = State {
        from_ms,
        fields: fields(config, catalog, views)?,
        predictions_topic: config.kafka.topic(&config.score.predictions_topic),
        labels_topic: String::new(),
        tracker: Tracker::new(limits),
        summary: MonitorSummary::default(),
    };
    if let Some(labels) = catalog.source(&m.labels) {
        state.labels_topic = config.kafka.topic(&labels.topic);
    }
    let topics = [state.predictions_topic.clone(), state.labels_topic.clone()];
    let consumer = consumer::assigned(config, &topics, from_ms)?;
    events::started(&topics, from_ms);
    let mut evaluation = Evaluation::new(config, catalog, views)?;
    // Nothing is evaluated before the backlog of the window is read (a first evaluation
    // would report a part of it as the whole).
    let mut caught_up = false;
    let mut next = now_us();
    while !stop() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                state.take(&message);
                health.set_ready();
            }
            Some(Err(error)) => {
                // The consumer retries by itself; say so and wait a little.
                events::consumer_error(&error);
                health.set_not_ready(format!("kafka: {error}"));
                std::thread::sleep(Duration::from_millis(500));
            }
            None => {
                if !caught_up {
                    events::caught_up(state.summary.predictions, state.summary.labels);
                    health.set_ready();
                }
                caught_up = true;
            }
        }
        let now = now_us();
        evaluation.retraining_done(now);
        if caught_up && now >= next {
            next = now + limits.interval_us;
            state.summary.evaluations += 1;
            let evaluated = evaluation.run(&mut state.tracker, now);
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

/// How predictions and labels name their fields: the scored sources' event ids, the label
/// source's id and boolean column.
fn fields(config: &Config, catalog: &Catalog, views: &ViewCatalog) -> Result<Fields> {
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
    // The scored sources: `score.sources`, or every source with a view (as the worker reads it).
    let prediction_ids: Vec<String> = catalog
        .sources
        .iter()
        .filter(|s| views.scores(&config.score.sources, &s.name))
        .filter_map(|s| s.id.clone())
        .collect();
    if prediction_ids.is_empty() {
        return Err(Error::Invalid(
            "no scored source declares an event id: predictions cannot be joined with labels"
                .into(),
        ));
    }
    Ok(Fields {
        prediction_ids,
        label_id,
        label,
    })
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
        if message
            .timestamp()
            .to_millis()
            .is_some_and(|ms| ms < self.from_ms)
        {
            return;
        }
        let now = now_us();
        let read = if topic == self.predictions_topic {
            read::prediction(&self.fields, payload).map(|seen| {
                match self.tracker.prediction(seen, now) {
                    Taken::Repeated => "repeated",
                    Taken::New => {
                        self.summary.predictions += 1;
                        "ok"
                    }
                    Taken::Labelled(slots) => {
                        self.summary.predictions += 1;
                        slots
                            .iter()
                            .for_each(|s| events::labels_joined(&s.model_id));
                        "ok"
                    }
                }
            })
        } else if topic == self.labels_topic {
            read::label(&self.fields, payload).map(|(id, label)| {
                self.summary.labels += 1;
                if let Joined::InWindow(slots) | Joined::PastWindow(slots) =
                    self.tracker.label(&id, label, now)
                {
                    slots
                        .iter()
                        .for_each(|s| events::labels_joined(&s.model_id));
                }
                "ok"
            })
        } else {
            return;
        };
        match read {
            Ok(result) => events::message(topic, result, None),
            Err(e) => {
                self.summary.unreadable += 1;
                events::message(topic, "unreadable", Some(&e));
            }
        }
    }
}

pub(crate) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
