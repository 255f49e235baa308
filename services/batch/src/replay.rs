//! The batch replay: the raw store of one source, read with DataFusion segment by segment and
//! replayed in arrival order through the same aggregation core as the streaming path
//! (`quiver_features::ViewPlan`), keeping one state per (entity, source partition) shard — the
//! memory is bounded by the active entities, not by the data.
//!
//! **Order and clocks.** Within a partition, events are applied in offset order (the lateness
//! rule and the shard state depend on nothing else). Across partitions, a vector as of an event
//! merges the entity's other shards as they stood when the event was processed. The streaming
//! path records exactly that in the feature log's `_clock` (the other shards' applied offsets),
//! so when a logged clock exists, the replay first advances each named partition through that
//! offset, and reads the other shards there: the recomputed row is then the streaming row
//! (bit for bit). Without a logged clock (a new view, or a store without a log), partitions are
//! interleaved by ingest batch — the smallest `(_ingest_time, partition)` next, a batch (one
//! `_ingest_time` run of a partition) never split — and the clock is what that order gives.
//!
//! A logged clock that this order cannot meet (two ingest members that each read the other's
//! shard before either wrote it) is counted as a clock divergence; the row is then computed
//! from the shards as they are, and `quiver verify` reports it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, TimestampMicrosecondArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::execution::options::ArrowReadOptions;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use quiver_core::schema::{INGEST_TIME_COLUMN, OFFSET_COLUMN, SourceSchema};
use quiver_features::log::{CLOCK_COLUMN, Column, LogBuilder, LogRow, clock_json, parse_clock};
use quiver_features::{Applied, BoundView, Clock, EntityShards, FeatureView, Shard, ViewPlan};
use quiver_store::{SegmentFile, SegmentStore, Table};
use tokio::runtime::Handle;

use crate::{Error, Result};

/// An event-time range `[from, to)` in µs; `None` is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive lower bound.
    pub from: Option<i64>,
    /// Exclusive upper bound.
    pub to: Option<i64>,
}

impl TimeRange {
    /// Whether `t` is inside.
    pub fn contains(&self, t: i64) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|e| t < e)
    }

    /// Whether the range is unbounded on both sides.
    pub fn is_all(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }
}

/// Progress of a long replay.
#[derive(Debug, Clone)]
pub struct Progress {
    /// What is replayed (the view).
    pub label: String,
    /// Events replayed.
    pub events: u64,
    /// Events in the store (from segment names: an upper bound when dead letters left gaps).
    pub total: u64,
    /// Time since the start.
    pub elapsed: Duration,
}

impl Progress {
    /// A one-line summary: events done / total, rate, ETA.
    pub fn line(&self, what: &str) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let rate = self.events as f64 / secs;
        let pct = if self.total > 0 {
            100.0 * self.events as f64 / self.total as f64
        } else {
            100.0
        };
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(self.events)) as f64 / rate
        } else {
            0.0
        };
        format!(
            "{what} {}: {} / {} events ({pct:.0} %), {:.0} k events/s, ETA {eta:.0} s",
            self.label,
            self.events,
            self.total,
            rate / 1e3
        )
    }
}

/// What the replay does with the recomputed rows: called once per view and selected raw
/// segment, in each partition's offset order, with the segment's log rows (offset order).
pub trait Sink {
    /// Receives the rows of `view` for `segment`.
    fn segment(
        &mut self,
        view: &FeatureView,
        segment: &SegmentFile,
        rows: RecordBatch,
    ) -> Result<()>;
}

/// Counters of a finished replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Events replayed.
    pub events: u64,
    /// Rows recomputed (events of selected segments, per view).
    pub rows: u64,
    /// Events dropped as late, summed over views.
    pub late: u64,
    /// Rows whose logged clock could not be met (see the module docs).
    pub clock_divergences: u64,
    /// Raw segments read.
    pub segments: usize,
    /// Entities with state, per view.
    pub entities: BTreeMap<String, usize>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Every entity's final shards of one view, in partition order (for `--materialize`).
pub type FinalShards = HashMap<String, Vec<(i32, Shard)>>;

struct ViewJob {
    view: BoundView,
    entities: HashMap<String, EntityShards>,
    /// Whether logged vectors merged other partitions' shards: the replay then keeps the
    /// versions of each shard at its segments' ends, which those clocks may name.
    versions: bool,
    /// Logged clocks per partition (present when the view has a log and clocks are used).
    logs: BTreeMap<i32, LogCursor>,
    late: u64,
}

/// A view's existing feature-log segments of one partition, read in offset order.
struct LogCursor {
    segments: VecDeque<SegmentFile>,
    loaded: Option<(Int64Array, ArrayRef, i64)>,
}

/// One raw segment being replayed.
struct Loaded {
    segment: SegmentFile,
    batch: RecordBatch,
    offsets: Int64Array,
    ingest: TimestampMillisecondArray,
    times: TimestampMicrosecondArray,
    row: usize,
    selected: bool,
    outputs: Vec<LogBuilder>,
    /// The ends of the segments a compaction merged into this one, but its own (the replay
    /// seals the partition there as it would have between the original segments).
    inner_ends: VecDeque<i64>,
}

struct Cursor {
    partition: i32,
    segments: VecDeque<SegmentFile>,
    loaded: Option<Loaded>,
    busy: bool,
    /// Segments of the partition finished so far, merged ones counted as the segments they
    /// were (what its shards' versions are kept at).
    seal: u64,
}

/// The replay of one source.
pub struct Replay<'a> {
    ctx: SessionContext,
    handle: Handle,
    raw: SegmentStore,
    source: Arc<SourceSchema>,
    columns: Vec<String>,
    views: Vec<ViewJob>,
    cursors: Vec<Cursor>,
    selected: Option<HashSet<PathBuf>>,
    sink: &'a mut dyn Sink,
    scratch: Vec<u8>,
    report: ReplayReport,
    total: u64,
    started: Instant,
    last_progress: Instant,
    progress: &'a (dyn Fn(Progress) + Sync),
}

impl std::fmt::Debug for Replay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("source", &self.source.name)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

/// Options of a replay.
pub struct ReplayOptions<'a> {
    /// The raw segments whose rows are recomputed (`None`: all); state is always built from
    /// the start of the store.
    pub selected: Option<HashSet<PathBuf>>,
    /// Reproduce the clocks logged by the streaming path (else: ingest-batch order).
    pub logged_clocks: bool,
    /// Receives recomputed rows.
    pub sink: &'a mut dyn Sink,
    /// Called about every two seconds.
    pub progress: &'a (dyn Fn(Progress) + Sync),
}

impl std::fmt::Debug for ReplayOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayOptions")
            .field("selected", &self.selected.as_ref().map(HashSet::len))
            .field("logged_clocks", &self.logged_clocks)
            .finish_non_exhaustive()
    }
}

impl<'a> Replay<'a> {
    /// Prepares the replay of `views` (all of `source`) from the stores under `store_dir`.
    /// Call from a blocking thread of a Tokio runtime (DataFusion reads run on `handle`).
    pub fn new(
        handle: Handle,
        store_dir: &std::path::Path,
        source: Arc<SourceSchema>,
        views: &[Arc<FeatureView>],
        options: ReplayOptions<'a>,
    ) -> Result<Self> {
        let raw = SegmentStore::open(store_dir, Table::Raw)?;
        let offline = SegmentStore::open(store_dir, Table::FeatureLog)?;
        let mut by_partition: BTreeMap<i32, VecDeque<SegmentFile>> = BTreeMap::new();
        let mut total = 0u64;
        for segment in raw.segments(&source.name)? {
            total += (segment.id.last_offset - segment.id.first_offset + 1) as u64;
            by_partition
                .entry(segment.id.partition)
                .or_default()
                .push_back(segment);
        }
        let mut columns = vec![
            OFFSET_COLUMN.to_string(),
            INGEST_TIME_COLUMN.to_string(),
            source.event_time.clone(),
        ];
        let mut jobs = Vec::with_capacity(views.len());
        for view in views {
            let bound = ViewPlan::new(Arc::clone(view)).bind(&source)?;
            for c in bound.columns() {
                if !columns.iter().any(|x| x == c) {
                    columns.push(c.to_string());
                }
            }
            let mut logs = BTreeMap::new();
            let mut versions = false;
            if options.logged_clocks {
                versions = log_crosses_partitions(&handle, &offline, &view.name)?;
                for segment in offline.segments(&view.name)? {
                    logs.entry(segment.id.partition)
                        .or_insert_with(|| LogCursor {
                            segments: VecDeque::new(),
                            loaded: None,
                        })
                        .segments
                        .push_back(segment);
                }
            }
            jobs.push(ViewJob {
                view: bound,
                entities: HashMap::new(),
                versions,
                logs,
                late: 0,
            });
        }
        let cursors = by_partition
            .into_iter()
            .map(|(partition, segments)| Cursor {
                partition,
                segments,
                loaded: None,
                busy: false,
                seal: 0,
            })
            .collect();
        Ok(Self {
            ctx: crate::session(),
            handle,
            raw,
            source,
            columns,
            views: jobs,
            cursors,
            selected: options.selected,
            sink: options.sink,
            scratch: Vec::new(),
            report: ReplayReport::default(),
            total,
            started: Instant::now(),
            last_progress: Instant::now(),
            progress: options.progress,
        })
    }

    /// The replay of one view over the `selected` raw segments, following logged clocks (what
    /// `backfill` and `verify` run, one per view).
    pub fn of_view(
        handle: Handle,
        store_dir: &std::path::Path,
        source: Arc<SourceSchema>,
        view: Arc<FeatureView>,
        selected: HashSet<PathBuf>,
        sink: &'a mut dyn Sink,
        progress: &'a (dyn Fn(Progress) + Sync),
    ) -> Result<Self> {
        Self::new(
            handle,
            store_dir,
            source,
            &[view],
            ReplayOptions {
                selected: Some(selected),
                logged_clocks: true,
                sink,
                progress,
            },
        )
    }

    /// Replays everything; returns the counters.
    pub fn run(&mut self) -> Result<ReplayReport> {
        self.started = Instant::now();
        for i in 0..self.cursors.len() {
            self.ensure_loaded(i)?;
        }
        let mut current: Option<(usize, i64)> = None;
        loop {
            // Stay on the current ingest batch; else the smallest (ingest time, partition).
            let next = match current {
                Some((i, batch)) if self.head_ingest(i) == Some(batch) => Some(i),
                _ => (0..self.cursors.len())
                    .filter_map(|i| self.head_ingest(i).map(|t| (t, i)))
                    .min()
                    .map(|(_, i)| i),
            };
            let Some(i) = next else { break };
            current = self.head_ingest(i).map(|t| (i, t));
            self.step(i)?;
        }
        self.report.elapsed = self.started.elapsed();
        self.report.late = self.views.iter().map(|v| v.late).sum();
        for v in &self.views {
            self.report
                .entities
                .insert(v.view.view().name.clone(), v.entities.len());
        }
        (self.progress)(Progress {
            label: self.label(),
            events: self.report.events,
            total: self.total.max(self.report.events),
            elapsed: self.report.elapsed,
        });
        Ok(self.report.clone())
    }

    /// The final shards of every entity of each view (for `--materialize`).
    pub fn into_states(self) -> Vec<(Arc<FeatureView>, FinalShards)> {
        self.views
            .into_iter()
            .map(|v| {
                let view = Arc::clone(v.view.view());
                let states = v
                    .entities
                    .into_iter()
                    .map(|(k, e)| (k, e.iter().map(|(p, s)| (p, s.clone())).collect()))
                    .collect();
                (view, states)
            })
            .collect()
    }

    fn label(&self) -> String {
        let names: Vec<&str> = self
            .views
            .iter()
            .map(|v| v.view.view().name.as_str())
            .collect();
        names.join(",")
    }

    fn head_ingest(&self, i: usize) -> Option<i64> {
        let l = self.cursors[i].loaded.as_ref()?;
        Some(l.ingest.value(l.row))
    }

    fn head_offset(&self, i: usize) -> Option<i64> {
        let l = self.cursors[i].loaded.as_ref()?;
        Some(l.offsets.value(l.row))
    }

    /// Loads the cursor's next segment if the current one is done.
    fn ensure_loaded(&mut self, i: usize) -> Result<()> {
        while self.cursors[i].loaded.is_none() {
            let Some(segment) = self.cursors[i].segments.pop_front() else {
                return Ok(());
            };
            let batch = self.read_raw(&segment)?;
            if batch.num_rows() == 0 {
                continue;
            }
            let inner_ends = self.raw.inner_ends(&segment)?.into();
            let offsets = typed::<Int64Array>(&batch, 0, OFFSET_COLUMN)?;
            let ingest = typed::<TimestampMillisecondArray>(&batch, 1, INGEST_TIME_COLUMN)?;
            let times = typed::<TimestampMicrosecondArray>(&batch, 2, &self.source.event_time)?;
            if offsets.values().windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::Replay(format!(
                    "raw segment {} is not in offset order",
                    segment.path.display()
                )));
            }
            let selected = self
                .selected
                .as_ref()
                .is_none_or(|s| s.contains(&segment.path));
            let outputs = self
                .views
                .iter()
                .map(|v| LogBuilder::new(v.view.log_schema(), self.source.id.is_some()))
                .collect();
            self.report.segments += 1;
            self.cursors[i].loaded = Some(Loaded {
                segment,
                batch,
                offsets,
                ingest,
                times,
                row: 0,
                selected,
                outputs,
                inner_ends,
            });
        }
        Ok(())
    }

    fn read_raw(&self, segment: &SegmentFile) -> Result<RecordBatch> {
        let columns: Vec<&str> = self.columns.iter().map(String::as_str).collect();
        read_segment(&self.handle, &self.ctx, segment, &columns)
    }

    /// Replays the head event of cursor `i` (after the partitions its logged clocks name have
    /// reached their offsets), then moves past it.
    fn step(&mut self, i: usize) -> Result<()> {
        let Some(offset) = self.head_offset(i) else {
            return Ok(());
        };
        let partition = self.cursors[i].partition;
        // Logged clocks of this event, per view (None: no log row).
        let mut clocks: Vec<Option<Clock>> = Vec::with_capacity(self.views.len());
        for v in 0..self.views.len() {
            let clock = self.logged_clock(v, partition, offset)?;
            clocks.push(clock);
        }
        // Dependencies: every partition a clock names must have passed its offset.
        let mut deps: Clock = BTreeMap::new();
        for clock in clocks.iter().flatten() {
            for (&q, &o) in clock {
                if q != partition {
                    let d = deps.entry(q).or_insert(o);
                    *d = (*d).max(o);
                }
            }
        }
        if !deps.is_empty() {
            self.cursors[i].busy = true;
            for (q, o) in deps {
                let Some(j) = self.cursors.iter().position(|c| c.partition == q) else {
                    continue;
                };
                while !self.cursors[j].busy && self.head_offset(j).is_some_and(|h| h <= o) {
                    self.step(j)?;
                }
            }
            self.cursors[i].busy = false;
        }
        self.apply_head(i, &clocks)?;
        self.advance(i)
    }

    fn logged_clock(&mut self, v: usize, partition: i32, offset: i64) -> Result<Option<Clock>> {
        let ctx = self.ctx.clone();
        let handle = self.handle.clone();
        let Some(cursor) = self.views[v].logs.get_mut(&partition) else {
            return Ok(None);
        };
        loop {
            if let Some((offsets, clocks, last)) = &cursor.loaded {
                if offset <= *last {
                    let Ok(row) = offsets.values().binary_search(&offset) else {
                        return Ok(None);
                    };
                    let text = Column::new(clocks.as_ref()).key(row);
                    return Ok(Some(parse_clock(&text)?));
                }
                cursor.loaded = None;
            }
            let Some(segment) = cursor.segments.front() else {
                return Ok(None);
            };
            if segment.id.first_offset > offset {
                return Ok(None);
            }
            let Some(segment) = cursor.segments.pop_front() else {
                return Ok(None);
            };
            if segment.id.last_offset < offset {
                continue;
            }
            let batch = read_segment(&handle, &ctx, &segment, &[OFFSET_COLUMN, CLOCK_COLUMN])?;
            let offsets = typed::<Int64Array>(&batch, 0, OFFSET_COLUMN)?;
            cursor.loaded = Some((offsets, Arc::clone(batch.column(1)), segment.id.last_offset));
        }
    }

    /// Applies the head event of cursor `i` to every view and records its rows.
    fn apply_head(&mut self, i: usize, clocks: &[Option<Clock>]) -> Result<()> {
        let cursor = &mut self.cursors[i];
        let partition = cursor.partition;
        let Some(loaded) = cursor.loaded.as_mut() else {
            return Ok(());
        };
        let row = loaded.row;
        let offset = loaded.offsets.value(row);
        // Past the end of a segment merged into this one: a new seal, as between segments —
        // one however many ends lie between two rows (the segments between them had no rows,
        // and the replay skips those without a seal), none before the first row.
        let mut crossed = false;
        while loaded.inner_ends.front().is_some_and(|&end| end < offset) {
            loaded.inner_ends.pop_front();
            crossed = true;
        }
        if crossed && loaded.row > 0 {
            cursor.seal += 1;
        }
        let seal = cursor.seal;
        let time = loaded.times.value(row);
        for (v, job) in self.views.iter_mut().enumerate() {
            let rows = job.view.rows(&loaded.batch)?;
            let mut inputs = Vec::new();
            let key = rows.entity(row);
            rows.inputs(row, &mut inputs);
            let entity = match job.entities.get_mut(key.as_str()) {
                Some(e) => e,
                None => job.entities.entry(key.clone()).or_default(),
            };
            let plan = job.view.plan();
            let seal = if job.versions { seal } else { 0 };
            let outcome = entity.apply_sealed(
                plan,
                partition,
                (offset, time),
                &inputs,
                &mut self.scratch,
                seal,
            );
            let late = outcome == Some(Applied::Late);
            if late {
                job.late += 1;
            }
            if !loaded.selected {
                continue;
            }
            // The clock: as logged (exact reproduction), else the other shards as they are.
            let clock = match &clocks[v] {
                Some(logged) => {
                    if !entity.meets(partition, logged) {
                        self.report.clock_divergences += 1;
                    }
                    logged.clone()
                }
                None => entity.clock(partition),
            };
            let (as_of, values) = entity.vector_as_of(plan, partition, time, Some(&clock));
            loaded.outputs[v].push(
                LogRow {
                    entity: &key,
                    id: rows.id(row).as_ref(),
                    time,
                    partition,
                    offset,
                    as_of,
                    late,
                    clock: &clock_json(&clock),
                },
                &values,
            );
            self.report.rows += 1;
        }
        self.report.events += 1;
        if self.last_progress.elapsed() >= Duration::from_secs(2) {
            self.last_progress = Instant::now();
            (self.progress)(Progress {
                label: self.label(),
                events: self.report.events,
                total: self.total.max(self.report.events),
                elapsed: self.started.elapsed(),
            });
        }
        Ok(())
    }

    /// Moves cursor `i` past its head; a finished segment's rows go to the sink.
    fn advance(&mut self, i: usize) -> Result<()> {
        let done = match self.cursors[i].loaded.as_mut() {
            Some(l) => {
                l.row += 1;
                l.row >= l.batch.num_rows()
            }
            None => false,
        };
        if done && let Some(l) = self.cursors[i].loaded.take() {
            self.cursors[i].seal += 1;
            if l.selected {
                for (job, out) in self.views.iter().zip(l.outputs) {
                    let rows = out.finish()?;
                    self.sink.segment(job.view.view(), &l.segment, rows)?;
                }
            }
            self.ensure_loaded(i)?;
        }
        Ok(())
    }
}

fn typed<T: Array + Clone + 'static>(batch: &RecordBatch, i: usize, name: &str) -> Result<T> {
    batch
        .column(i)
        .as_any()
        .downcast_ref::<T>()
        .cloned()
        .ok_or_else(|| Error::Replay(format!("raw column `{name}` has an unexpected type")))
}

/// Reads `columns` of one store segment with DataFusion: Arrow IPC (raw store) or Parquet
/// (feature log), by extension. All columns when `columns` is empty.
pub(crate) fn read_segment(
    handle: &Handle,
    ctx: &SessionContext,
    segment: &SegmentFile,
    columns: &[&str],
) -> Result<RecordBatch> {
    let path = segment.path.display().to_string();
    let parquet = path.ends_with(".parquet");
    let ctx = ctx.clone();
    let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    let (schema, batches) = handle.block_on(async move {
        let mut frame = if parquet {
            ctx.read_parquet(&path, ParquetReadOptions::default())
                .await?
        } else {
            ctx.read_arrow(&path, ArrowReadOptions::default()).await?
        };
        if !columns.is_empty() {
            let names: Vec<&str> = columns.iter().map(String::as_str).collect();
            frame = frame.select_columns(&names)?;
        }
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await?;
        Ok::<_, datafusion::error::DataFusionError>((schema, batches))
    })?;
    Ok(concat_batches(&schema, &batches)?)
}

/// Whether any row of a view's feature log merged another partition's shard (a clock that is
/// not empty).
fn log_crosses_partitions(handle: &Handle, log: &SegmentStore, view: &str) -> Result<bool> {
    let dir = log.stream_dir(view);
    if log.segments(view)?.is_empty() {
        return Ok(false);
    }
    let path = format!("{}/", dir.display());
    let found = handle.block_on(async move {
        let ctx = crate::session();
        ctx.register_parquet("log", &path, ParquetReadOptions::default())
            .await?;
        let rows = ctx
            .sql(&format!(
                "SELECT 1 FROM log WHERE {CLOCK_COLUMN} <> '{{}}' LIMIT 1"
            ))
            .await?
            .collect()
            .await?;
        Ok::<_, datafusion::error::DataFusionError>(rows.iter().any(|b| b.num_rows() > 0))
    })?;
    Ok(found)
}

/// The raw segments of `source` holding at least one event with an event time in `range`
/// (read with DataFusion, event-time column only), by path.
pub fn segments_in_range(
    handle: &Handle,
    store_dir: &std::path::Path,
    source: &SourceSchema,
    range: TimeRange,
) -> Result<HashSet<PathBuf>> {
    let raw = SegmentStore::open(store_dir, Table::Raw)?;
    let ctx = crate::session();
    let mut out = HashSet::new();
    for segment in raw.segments(&source.name)? {
        if !range.is_all() {
            let batch = read_segment(handle, &ctx, &segment, &[source.event_time.as_str()])?;
            let times = typed::<TimestampMicrosecondArray>(&batch, 0, &source.event_time)?;
            if !(0..times.len()).any(|r| !times.is_null(r) && range.contains(times.value(r))) {
                continue;
            }
        }
        out.insert(segment.path);
    }
    Ok(out)
}

/// A source and the chosen views that read it.
pub type SourceViews = (Arc<SourceSchema>, Vec<Arc<FeatureView>>);

/// Resolves view names (all when empty), grouped by the source they read.
pub fn views_by_source(
    catalog: &quiver_core::Catalog,
    views: &quiver_features::ViewCatalog,
    names: &[String],
) -> Result<Vec<SourceViews>> {
    let chosen: Vec<Arc<FeatureView>> = if names.is_empty() {
        views.views.clone()
    } else {
        names
            .iter()
            .map(|n| {
                views.view(n).cloned().ok_or_else(|| {
                    let known: Vec<&str> = views.views.iter().map(|v| v.name.as_str()).collect();
                    Error::Invalid(format!(
                        "unknown view `{n}` (defined: {})",
                        known.join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?
    };
    let mut out: Vec<SourceViews> = Vec::new();
    for view in chosen {
        match out.iter_mut().find(|(s, _)| s.name == view.source) {
            Some((_, list)) => list.push(view),
            None => {
                let source = catalog
                    .sources
                    .iter()
                    .find(|s| s.name == view.source)
                    .cloned()
                    .ok_or_else(|| Error::Invalid(format!("unknown source `{}`", view.source)))?;
                out.push((source, vec![view]));
            }
        }
    }
    Ok(out)
}

/// Runs `run` on every job in its own thread (one replay per view) and collects the results in
/// job order; the first error wins.
pub(crate) fn in_parallel<J: Send, T: Send>(
    jobs: Vec<J>,
    run: impl Fn(J) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let run = &run;
    std::thread::scope(|scope| {
        let threads: Vec<_> = jobs
            .into_iter()
            .map(|job| scope.spawn(move || run(job)))
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(Error::Replay("a replay thread panicked".into())))
            })
            .collect()
    })
}
