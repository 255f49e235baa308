//! `quiver monitor run`: the live monitor of the deployed models. It tails the score store
//! (the predictions the worker made, as it wrote them) and the label source's raw store from
//! `monitor.window` (or `monitor.label_horizon`, the longer) ago ([`tail`]), joins labels to
//! predictions by event id ([`quiver_monitor::Tracker`]), and every `monitor.interval` reports
//! each model's window against its training baseline ([`quiver_monitor::report`]): as
//! Prometheus gauges ([`events`]) and as rows of the `monitor` table ([`history`]).
//!
//! It reads files, not topics: no second consumer of `predictions` on the broker, a columnar
//! read of the few columns it needs, and a prediction's inputs parsed only when the drift
//! sample keeps them. It keeps no position: a restarted monitor reads its window again from
//! the stores. It writes nothing but the monitor table.

mod evaluate;
mod events;
pub mod history;
pub mod read;
mod retrain;
mod tail;

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use quiver_core::{Catalog, Config, Retry};
use quiver_features::ViewCatalog;
use quiver_models::baseline::Baseline;
use quiver_models::metrics::Metrics;
use quiver_monitor::tracker::{Joined, Limits, Taken, Tracker};
use quiver_store::{SegmentStore, Table};
use quiver_telemetry::Health;

use crate::evaluate::Evaluation;
use crate::tail::{Kind, Stream};

/// Result alias of `quiver-monitor-run`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the live monitor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration or the schemas do not allow monitoring.
    #[error("{0}")]
    Invalid(String),
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
    let span_us = limits.window_us.max(limits.label_horizon_us);
    let mut state = State {
        streams: streams(config, catalog, views)?,
        tracker: Tracker::new(limits),
        summary: MonitorSummary::default(),
        freshest: BTreeMap::new(),
    };
    let names: Vec<String> = state.streams.iter().map(Stream::describe).collect();
    events::started(&names, (now_us() - span_us) / 1_000);
    let mut evaluation = Evaluation::new(config, catalog, views)?;
    // The stores are read a few times per interval, and once more right before each
    // evaluation (which then sees every segment written until then).
    let read_every = (limits.interval_us / 5).clamp(100_000, 5_000_000);
    // Nothing is evaluated before the backlog of the window is read (a first evaluation
    // would report a part of it as the whole).
    let mut caught_up = false;
    let mut next = now_us();
    let mut next_read = next;
    while !stop() {
        let now = now_us();
        if now >= next_read || (caught_up && now >= next) {
            next_read = now + read_every;
            match state.read(now - span_us, now) {
                Ok(()) => {
                    if !caught_up {
                        events::caught_up(state.summary.predictions, state.summary.labels);
                    }
                    caught_up = true;
                    health.set_ready();
                }
                Err(error) => {
                    events::read_error(&error);
                    health.set_not_ready(format!("store: {error}"));
                }
            }
        }
        let now = now_us();
        evaluation.retraining_done(now);
        if caught_up && now >= next {
            next = now + limits.interval_us;
            state.summary.evaluations += 1;
            let evaluated = evaluation.run(&mut state.tracker, &state.freshest, now);
            events::evaluated(
                evaluated.as_ref().map_or(0, |n| *n),
                state.tracker.pending(),
                evaluated
                    .as_ref()
                    .err()
                    .map(|e| e as &dyn std::fmt::Display),
            );
        }
        // Until the backlog is read, evaluations wait: only the next read matters.
        let wake = if caught_up {
            next_read.min(next)
        } else {
            next_read
        };
        let until = wake - now_us();
        std::thread::sleep(Duration::from_micros(until.clamp(1_000, 100_000) as u64));
    }
    Ok(state.summary)
}

/// The streams to tail: the score store of every scored source (with its event id) and the
/// label source's raw store (its event id and boolean column).
fn streams(config: &Config, catalog: &Catalog, views: &ViewCatalog) -> Result<Vec<Stream>> {
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
    let scores = SegmentStore::open(&config.store.dir, Table::Scores)?;
    let raw = SegmentStore::open(&config.store.dir, Table::Raw)?;
    // The scored sources: `score.sources`, or every source with a view (as the worker reads it).
    let mut out: Vec<Stream> = catalog
        .sources
        .iter()
        .filter(|s| views.scores(&config.score.sources, &s.name))
        .filter_map(|s| {
            let id = s.id.clone()?;
            Some(Stream::new(
                scores.clone(),
                s.name.clone(),
                Kind::Scores { id },
            ))
        })
        .collect();
    if out.is_empty() {
        return Err(Error::Invalid(
            "no scored source declares an event id: predictions cannot be joined with labels"
                .into(),
        ));
    }
    out.push(Stream::new(
        raw,
        label_source.name.clone(),
        Kind::Labels {
            id: label_id,
            label,
        },
    ));
    let log = SegmentStore::open(&config.store.dir, Table::FeatureLog)?;
    out.extend(
        views
            .views
            .iter()
            .map(|v| Stream::new(log.clone(), v.name.clone(), Kind::Log)),
    );
    Ok(out)
}

/// What the loop keeps between reads.
struct State {
    streams: Vec<Stream>,
    tracker: Tracker,
    summary: MonitorSummary,
    /// Each view's latest event time in its feature log (µs).
    freshest: BTreeMap<String, i64>,
}

impl State {
    /// Reads every segment written since the last read (from `from_us` on, the first time).
    /// A segment that cannot be read now is tried again at the next read; one whose rows the
    /// monitor does not understand is counted and skipped.
    fn read(&mut self, from_us: i64, now_us: i64) -> Result<()> {
        let mut failed = None;
        for s in 0..self.streams.len() {
            let fresh = match self.streams[s].fresh(from_us) {
                Ok(fresh) => fresh,
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            for segment in fresh {
                let stream = &self.streams[s];
                // A feature-log segment gives only its newest event time, from its metadata.
                let read = match stream.kind {
                    Kind::Log => stream
                        .store
                        .newest_in(&segment, quiver_features::log::EVENT_TIME_COLUMN)
                        .map(|(latest, rows)| Segment::Newest(latest, rows)),
                    Kind::Scores { .. } | Kind::Labels { .. } => stream
                        .store
                        .read_columns(&segment, &stream.kind.columns())
                        .map(Segment::Rows),
                };
                match read {
                    Ok(Segment::Rows(batch)) if batch.num_rows() == 0 => {}
                    Ok(Segment::Rows(batch)) => self.take(s, &batch, now_us),
                    Ok(Segment::Newest(latest, rows)) => self.fresh_log(s, latest, rows),
                    Err(e) if e.retry() == Retry::Transient => {
                        self.streams[s].retry(&segment);
                        failed.get_or_insert(e.into());
                    }
                    // A segment that does not decode never will: counted, skipped, not retried
                    // (it would hold every evaluation back).
                    Err(e) => {
                        let counts = Counts {
                            unreadable: 1,
                            why: Some(format!("{}: {e}", segment.path.display())),
                            ..Counts::default()
                        };
                        self.summary.unreadable += 1;
                        events::rows(&stream.describe(), &counts);
                    }
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Takes in a feature-log segment of stream `s`: its newest event time and row count.
    fn fresh_log(&mut self, s: usize, latest: Option<i64>, rows: usize) {
        let stream = &self.streams[s];
        if let Some(latest) = latest {
            let held = self.freshest.entry(stream.name.clone()).or_insert(latest);
            *held = (*held).max(latest);
        }
        let counts = Counts {
            ok: rows as u64,
            ..Counts::default()
        };
        events::rows(&stream.describe(), &counts);
    }

    /// Takes in one segment's rows of stream `s` (predictions or labels).
    fn take(&mut self, s: usize, batch: &RecordBatch, now_us: i64) {
        let stream = &self.streams[s];
        let mut counts = Counts::default();
        let mut joined: BTreeMap<String, u64> = BTreeMap::new();
        match &stream.kind {
            Kind::Scores { id } => match read::Scores::new(batch, id) {
                Ok(scores) => {
                    for i in 0..scores.len() {
                        let seen = match scores.seen(i) {
                            Ok(seen) => seen,
                            Err(e) => {
                                counts.unreadable(&e);
                                continue;
                            }
                        };
                        match self.tracker.prediction(seen, &|| scores.inputs(i), now_us) {
                            Taken::Repeated => counts.repeated += 1,
                            Taken::New => counts.ok += 1,
                            Taken::Labelled(slots) => {
                                counts.ok += 1;
                                for s in slots {
                                    *joined.entry(s.model_id).or_default() += 1;
                                }
                            }
                        }
                    }
                    self.summary.predictions += counts.ok;
                }
                Err(e) => counts.unreadable_all(batch.num_rows(), &e),
            },
            // Read from its metadata (`fresh_log`).
            Kind::Log => {}
            Kind::Labels { id, label } => match read::labels(batch, id, label) {
                Ok((labels, skipped)) => {
                    counts.skipped = skipped;
                    for (id, label) in labels {
                        counts.ok += 1;
                        if let Joined::InWindow(slots) | Joined::PastWindow(slots) =
                            self.tracker.label(&id, label, now_us)
                        {
                            for s in slots {
                                *joined.entry(s.model_id).or_default() += 1;
                            }
                        }
                    }
                    self.summary.labels += counts.ok;
                }
                Err(e) => counts.unreadable_all(batch.num_rows(), &e),
            },
        }
        self.summary.unreadable += counts.unreadable;
        events::rows(&stream.describe(), &counts);
        for (model_id, n) in joined {
            events::labels_joined(&model_id, n);
        }
    }
}

/// What reading one segment gave.
enum Segment {
    /// Its rows (the columns of its stream's kind).
    Rows(RecordBatch),
    /// A feature-log segment's newest event time and row count.
    Newest(Option<i64>, usize),
}

/// What one segment's rows gave.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) ok: u64,
    /// Predictions seen before (a replay re-wrote them): not counted twice.
    pub(crate) repeated: u64,
    /// Rows the monitor does not understand.
    pub(crate) unreadable: u64,
    /// Label rows without an id or a label.
    pub(crate) skipped: u64,
    /// Why the first unreadable row was.
    pub(crate) why: Option<String>,
}

impl Counts {
    fn unreadable(&mut self, why: &Error) {
        self.unreadable += 1;
        self.why.get_or_insert_with(|| why.to_string());
    }

    fn unreadable_all(&mut self, rows: usize, why: &Error) {
        self.unreadable += rows as u64;
        self.why.get_or_insert_with(|| why.to_string());
    }
}

pub(crate) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
