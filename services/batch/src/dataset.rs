//! `quiver dataset build`: point-in-time-correct training sets.
//!
//! Each label row names entity keys and a time `T` — either directly (a Parquet file with the
//! views' entity columns and a time column) or through the id of a source event (the demo's
//! `labels` carry `txn_id`: the row takes that transaction's keys and event time, so its
//! features are the vector the scorer would have seen for it). The features of a row are the
//! view's values read at `T` over exactly the entity's events with `event_time ≤ T`, with the
//! lateness rule applied per (entity, partition) shard in arrival order — never a value from
//! the row's future (`../shared/DESIGN.md`, "Point in time").
//!
//! The raw store is read with DataFusion, restricted to the labelled entities and sorted by
//! (entity, partition, offset) — DataFusion spills the sort to disk when it is large — and each
//! entity's events are folded through the shared aggregation core, once per label time
//! (incrementally while the included events only grow at the end of each shard, as they do
//! when events arrive in time order).
//!
//! Output: `train.parquet` and `test.parquet` (the labels whose time is in the last
//! `test_fraction` of rows by time; one cut time, so no time is in both), and `manifest.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt as _;
use quiver_core::schema::{OFFSET_COLUMN, PARTITION_COLUMN, timestamp_type};
use quiver_core::{Catalog, Config};
use quiver_features::log::{Column, log_schema};
use quiver_features::{EntityState, FeatureView, Value, ViewCatalog, ViewPlan};
use serde::Serialize;
use tokio::runtime::Handle;

use crate::{Error, Result};

/// Name of the label time column in the output.
pub const TIME_COLUMN: &str = "event_time";

/// What to build.
#[derive(Debug, Clone)]
pub struct DatasetOptions {
    /// A source name (its raw store) or a Parquet file or directory.
    pub labels: String,
    /// Views whose features are joined (empty: all).
    pub views: Vec<String>,
    /// Output directory.
    pub out: PathBuf,
    /// The label column (default: the labels' only boolean column).
    pub label_column: Option<String>,
    /// Time column of Parquet labels without an event id (default `event_time`).
    pub time_column: Option<String>,
    /// Fraction of rows, latest by time, in the test split.
    pub test_fraction: f64,
    /// Only the latest this many label rows by time (the retraining policy's recent window);
    /// `None`: all of them.
    pub latest: Option<usize>,
    /// Where the features come from.
    pub vectors: Vectors,
    /// Only label rows with a time at or before this (µs): a training set of one period.
    pub until: Option<i64>,
}

impl DatasetOptions {
    /// Every view, the default label and time columns, and a 20 % test split.
    pub fn new(labels: impl Into<String>, out: PathBuf) -> Self {
        Self {
            labels: labels.into(),
            views: Vec::new(),
            out,
            label_column: None,
            time_column: None,
            test_fraction: 0.2,
            latest: None,
            vectors: Vectors::Recomputed,
            until: None,
        }
    }
}

/// Time range and label balance of a split.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitSummary {
    /// Rows.
    pub rows: usize,
    /// Earliest label time (RFC 3339).
    pub time_min: Option<String>,
    /// Latest label time (RFC 3339).
    pub time_max: Option<String>,
    /// Rows whose label is true (or non-zero).
    pub positives: usize,
    /// `positives / rows`.
    pub positive_rate: f64,
}

/// `manifest.json` of a training set.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// When it was built.
    pub created_at: String,
    /// Where the labels came from.
    pub labels: String,
    /// How label rows got their keys and time.
    pub join: String,
    /// Label column.
    pub label_column: String,
    /// Views joined.
    pub views: Vec<String>,
    /// Feature columns, in model input order (`<view>__<feature>`).
    pub features: Vec<String>,
    /// Entity key columns.
    pub keys: Vec<String>,
    /// Test rows: label time ≥ this (RFC 3339).
    pub test_from: Option<String>,
    /// The requested test fraction.
    pub test_fraction: f64,
    /// Train split.
    pub train: SplitSummary,
    /// Test split.
    pub test: SplitSummary,
    /// Label rows dropped because their event id matched no event.
    pub unmatched_labels: usize,
    /// Where the features came from: `recomputed` (point in time, from the raw store) or
    /// `logged` (the vectors the worker scored with).
    pub vectors: Vectors,
    /// With logged vectors: label rows dropped because a view logged no vector for their event
    /// (not ingested yet, or its log rows removed by retention).
    pub unlogged_labels: usize,
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct DatasetReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Label rows in memory: time (µs), keys per entity column, label value, optional id.
struct Labels {
    times: Vec<i64>,
    keys: BTreeMap<String, Vec<String>>,
    label: ArrayRef,
    label_name: String,
    id: Option<(String, Vec<String>)>,
    join: String,
    unmatched: usize,
}

impl Labels {
    /// Keeps the `n` latest rows by time.
    fn keep_latest(&mut self, n: usize) -> Result<()> {
        if self.times.len() <= n {
            return Ok(());
        }
        let mut order: Vec<usize> = (0..self.times.len()).collect();
        order.sort_by_key(|&i| self.times[i]);
        let mut keep = vec![false; self.times.len()];
        for &i in &order[order.len() - n..] {
            keep[i] = true;
        }
        self.retain(&keep)
    }

    /// Keeps the rows whose `keep` is true.
    fn retain(&mut self, keep: &[bool]) -> Result<()> {
        retain_rows(&mut self.times, keep);
        for keys in self.keys.values_mut() {
            retain_rows(keys, keep);
        }
        if let Some((_, ids)) = &mut self.id {
            retain_rows(ids, keep);
        }
        let mask = BooleanArray::from(keep.to_vec());
        self.label = datafusion::arrow::compute::filter(self.label.as_ref(), &mask)?;
        Ok(())
    }
}

/// Keeps the items of `rows` whose `keep` is true.
fn retain_rows<T>(rows: &mut Vec<T>, keep: &[bool]) {
    let mut keep = keep.iter();
    rows.retain(|_| keep.next().copied().unwrap_or(false));
}

fn rfc3339(t: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_micros(t).map(|d| d.to_rfc3339())
}

fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io {
        context,
        path,
        source,
    }
}

/// Builds a training set. Call from a blocking thread of a Tokio runtime.
pub fn build(
    handle: Handle,
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
    options: &DatasetOptions,
) -> Result<DatasetReport> {
    if !(0.0..1.0).contains(&options.test_fraction) {
        return Err(Error::Invalid(format!(
            "test fraction must be in [0, 1): got {}",
            options.test_fraction
        )));
    }
    let by_source = crate::replay::views_by_source(catalog, views, &options.views)?;
    let chosen: Vec<Arc<FeatureView>> = by_source.iter().flat_map(|(_, v)| v.clone()).collect();
    let stores = handle.block_on(crate::open(config, catalog, views))?;
    let mut labels = handle.block_on(load_labels(&stores.ctx, catalog, &chosen, options))?;
    // Logged vectors: by event id, for the views of the source the labels name events of (a
    // view of another source is recomputed); only label rows every such view logged a vector
    // for are kept.
    let mut logged: Vec<Option<HashMap<String, Vec<Value>>>> = Vec::new();
    let mut unlogged = 0;
    if options.vectors == Vectors::Logged {
        let Some((_, ids)) = &labels.id else {
            return Err(Error::Invalid(
                "logged vectors need labels that name their events by id".into(),
            ));
        };
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let id_source = by_source.first().map(|(s, _)| s.name.clone());
        for (source, view) in by_source
            .iter()
            .flat_map(|(s, views)| views.iter().map(move |v| (s, v)))
        {
            logged.push(if Some(&source.name) == id_source.as_ref() {
                Some(handle.block_on(logged_vectors(&stores.ctx, view, source, &wanted))?)
            } else {
                None
            });
        }
        let keep: Vec<bool> = ids
            .iter()
            .map(|id| logged.iter().flatten().all(|m| m.contains_key(id)))
            .collect();
        unlogged = keep.iter().filter(|k| !**k).count();
        let labelled = ids.len();
        labels.retain(&keep)?;
        if labels.times.is_empty() && labelled > 0 {
            return Err(Error::Invalid(format!(
                "none of the {labelled} labelled events has a logged vector yet (is the worker \
                 running, and were its feature logs removed by retention?)"
            )));
        }
    }
    if let Some(latest) = options.latest {
        labels.keep_latest(latest)?;
    }
    let rows = labels.times.len();
    if rows == 0 {
        return Err(Error::Invalid(format!(
            "no label rows in `{}` (after matching them to events)",
            options.labels
        )));
    }

    // Features per view, one vector per label row.
    let mut columns: Vec<(Field, ArrayRef)> = Vec::new();
    for (v, (source, view)) in by_source
        .iter()
        .flat_map(|(s, views)| views.iter().map(move |v| (s, v)))
        .enumerate()
    {
        let keys = labels.keys.get(&view.entity).ok_or_else(|| {
            Error::Invalid(format!(
                "labels have no `{}` column for view `{}`",
                view.entity, view.name
            ))
        })?;
        let values = match (logged.get(v).and_then(Option::as_ref), &labels.id) {
            (Some(by_id), Some((_, ids))) => ids
                .iter()
                .map(|id| {
                    by_id
                        .get(id)
                        .cloned()
                        .unwrap_or_else(|| vec![Value::Null; view.aggregations.len()])
                })
                .collect(),
            _ => handle.block_on(view_features(
                &stores.ctx,
                view,
                source,
                keys,
                &labels.times,
            ))?,
        };
        let schema = log_schema(view, source);
        let first = schema.fields().len() - view.aggregations.len();
        for (i, agg) in view.aggregations.iter().enumerate() {
            let ty = schema.field(first + i).data_type().clone();
            let column = values_to_array(values.iter().map(|v| &v[i]), &ty);
            columns.push((
                Field::new(format!("{}__{}", view.name, agg.name), ty, true),
                column,
            ));
        }
    }

    // The table: id?, keys, time, label, features.
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    if let Some((name, ids)) = &labels.id {
        fields.push(Field::new(name, DataType::Utf8, true));
        arrays.push(Arc::new(StringArray::from_iter_values(ids)));
    }
    for (name, keys) in &labels.keys {
        fields.push(Field::new(name, DataType::Utf8, false));
        arrays.push(Arc::new(StringArray::from_iter_values(keys)));
    }
    fields.push(Field::new(TIME_COLUMN, timestamp_type(), false));
    arrays.push(Arc::new(
        TimestampMicrosecondArray::from(labels.times.clone()).with_timezone("UTC"),
    ));
    let label_name = labels.label_name.clone();
    fields.push(Field::new(
        &label_name,
        labels.label.data_type().clone(),
        true,
    ));
    arrays.push(Arc::clone(&labels.label));
    let feature_names: Vec<String> = columns.iter().map(|(f, _)| f.name().clone()).collect();
    for (field, array) in columns {
        fields.push(field);
        arrays.push(array);
    }
    let table = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;

    // Split by time: the latest `test_fraction` of rows, cut at one time.
    let mut order: Vec<u32> = (0..rows as u32).collect();
    order.sort_by_key(|&i| labels.times[i as usize]);
    let cut_index = ((rows as f64) * (1.0 - options.test_fraction)).floor() as usize;
    let cut = (options.test_fraction > 0.0 && cut_index < rows)
        .then(|| labels.times[order[cut_index] as usize]);
    let (train_idx, test_idx): (Vec<u32>, Vec<u32>) = order
        .iter()
        .partition(|&&i| cut.is_none_or(|c| labels.times[i as usize] < c));
    std::fs::create_dir_all(&options.out).map_err(io("create", &options.out))?;
    let mut files = Vec::new();
    let mut summaries = Vec::new();
    for (name, idx) in [("train", &train_idx), ("test", &test_idx)] {
        let indices = UInt32Array::from(idx.clone());
        let columns = table
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let part = RecordBatch::try_new(table.schema(), columns)?;
        let path = options.out.join(format!("{name}.parquet"));
        write_parquet(&path, &part)?;
        files.push(path);
        summaries.push(summary(idx, &labels));
    }
    let test = summaries.pop().unwrap_or_default();
    let train = summaries.pop().unwrap_or_default();
    let manifest = Manifest {
        created_at: Utc::now().to_rfc3339(),
        labels: options.labels.clone(),
        join: labels.join.clone(),
        label_column: label_name,
        views: chosen.iter().map(|v| v.name.clone()).collect(),
        features: feature_names,
        keys: labels.keys.keys().cloned().collect(),
        test_from: cut.and_then(rfc3339),
        test_fraction: options.test_fraction,
        train,
        test,
        unmatched_labels: labels.unmatched,
        vectors: options.vectors,
        unlogged_labels: unlogged,
    };
    let path = options.out.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Error::Invalid(format!("manifest: {e}")))?;
    std::fs::write(&path, text).map_err(io("write", &path))?;
    files.push(path);
    Ok(DatasetReport { manifest, files })
}

fn summary(idx: &[u32], labels: &Labels) -> SplitSummary {
    let positives = idx
        .iter()
        .filter(|&&i| is_positive(labels.label.as_ref(), i as usize))
        .count();
    let times = idx.iter().map(|&i| labels.times[i as usize]);
    SplitSummary {
        rows: idx.len(),
        time_min: times.clone().min().and_then(rfc3339),
        time_max: times.max().and_then(rfc3339),
        positives,
        positive_rate: if idx.is_empty() {
            0.0
        } else {
            positives as f64 / idx.len() as f64
        },
    }
}

/// Whether a label value counts as positive (true, or a non-zero number).
pub fn is_positive(label: &dyn Array, row: usize) -> bool {
    match Column::new(label).value(row) {
        Value::Bool(b) => b,
        Value::Int(i) => i != 0,
        Value::Float(f) => f != 0.0,
        _ => false,
    }
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let file = std::fs::File::create(path).map_err(io("create", path))?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None)?;
    writer.write(batch)?;
    writer.close()?;
    Ok(())
}

fn values_to_array<'a>(values: impl Iterator<Item = &'a Value>, ty: &DataType) -> ArrayRef {
    match ty {
        DataType::Int64 => Arc::new(
            values
                .map(|v| {
                    if let Value::Int(x) = v {
                        Some(*x)
                    } else {
                        None
                    }
                })
                .collect::<Int64Array>(),
        ),
        DataType::Utf8 => Arc::new(
            values
                .map(|v| {
                    if let Value::Str(x) = v {
                        Some(x.clone())
                    } else {
                        None
                    }
                })
                .collect::<StringArray>(),
        ),
        DataType::Boolean => Arc::new(
            values
                .map(|v| {
                    if let Value::Bool(x) = v {
                        Some(*x)
                    } else {
                        None
                    }
                })
                .collect::<BooleanArray>(),
        ),
        _ => Arc::new(values.map(Value::as_f64).collect::<Float64Array>()),
    }
}

/// Reads the label rows: keys, time and label per row.
async fn load_labels(
    ctx: &SessionContext,
    catalog: &Catalog,
    views: &[Arc<FeatureView>],
    options: &DatasetOptions,
) -> Result<Labels> {
    let label_source = catalog.sources.iter().find(|s| s.name == options.labels);
    let table = match label_source {
        Some(s) => {
            let name = format!("raw_{}", s.name);
            if ctx.table_exist(name.as_str())? {
                name
            } else {
                return Err(Error::Invalid(format!(
                    "the raw store of `{}` has no data yet",
                    s.name
                )));
            }
        }
        None => {
            let path = Path::new(&options.labels);
            if !path.exists() {
                return Err(Error::Invalid(format!(
                    "`{}` is neither a source ({}) nor a Parquet file or directory",
                    options.labels,
                    catalog
                        .sources
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            ctx.register_parquet(
                "labels_input",
                &options.labels,
                ParquetReadOptions::default(),
            )
            .await?;
            "labels_input".to_string()
        }
    };
    let schema = ctx.table(table.as_str()).await?.schema().as_arrow().clone();
    let has = |c: &str| schema.index_of(c).is_ok();
    let label_column = match &options.label_column {
        Some(c) if has(c) => c.clone(),
        Some(c) => {
            return Err(Error::Invalid(format!(
                "labels have no column `{c}` (columns: {})",
                column_list(&schema)
            )));
        }
        None => {
            let bools: Vec<&Field> = schema
                .fields()
                .iter()
                .filter(|f| f.data_type() == &DataType::Boolean)
                .map(|f| f.as_ref())
                .collect();
            match bools.as_slice() {
                [one] => one.name().clone(),
                _ => {
                    return Err(Error::Invalid(format!(
                        "name the label column with --label-column (columns: {})",
                        column_list(&schema)
                    )));
                }
            }
        }
    };
    // Entity columns the views need.
    let mut entities: Vec<String> = views.iter().map(|v| v.entity.clone()).collect();
    entities.sort();
    entities.dedup();
    // Join through the id of the views' source when the labels carry it.
    let event_source = views
        .first()
        .and_then(|v| catalog.sources.iter().find(|s| s.name == v.source));
    let id_join = event_source.and_then(|s| {
        let id = s.id.as_ref()?;
        (has(id) && Some(s.name.as_str()) != label_source.map(|l| l.name.as_str()))
            .then(|| (s.clone(), id.clone()))
    });
    let total: usize = ctx.table(table.as_str()).await?.count().await?;
    let (sql, join, id) = match &id_join {
        Some((source, id)) => {
            let raw = format!("raw_{}", source.name);
            if !ctx.table_exist(raw.as_str())? {
                return Err(Error::Invalid(format!(
                    "labels refer to `{}` events by `{id}`, but its raw store has no data yet",
                    source.name
                )));
            }
            let keys: Vec<String> = entities.iter().map(|e| format!("e.\"{e}\"")).collect();
            (
                format!(
                    "SELECT l.\"{label_column}\" AS label, e.\"{id}\" AS id, {}, e.\"{}\" AS t \
                     FROM {table} l JOIN {raw} e ON l.\"{id}\" = e.\"{id}\"",
                    keys.join(", "),
                    source.event_time
                ),
                format!(
                    "by `{id}` to the `{}` event (features as of that event)",
                    source.name
                ),
                Some(id.clone()),
            )
        }
        None => {
            let time = options
                .time_column
                .clone()
                .unwrap_or_else(|| TIME_COLUMN.to_string());
            for c in entities.iter().chain([&time]) {
                if !has(c) {
                    return Err(Error::Invalid(format!(
                        "labels need a `{c}` column (columns: {})",
                        column_list(&schema)
                    )));
                }
            }
            let keys: Vec<String> = entities.iter().map(|e| format!("\"{e}\"")).collect();
            (
                format!(
                    "SELECT \"{label_column}\" AS label, {}, \"{time}\" AS t FROM {table}",
                    keys.join(", ")
                ),
                format!("keys and `{time}` of each label row"),
                None,
            )
        }
    };
    let frame = ctx.sql(&sql).await?;
    let out_schema = Arc::new(frame.schema().as_arrow().clone());
    let batch = concat_batches(&out_schema, &frame.collect().await?)?;
    let time_column = batch
        .column_by_name("t")
        .ok_or_else(|| Error::Invalid("label time column missing".into()))?;
    let times = cast(time_column.as_ref(), &timestamp_type())
        .map_err(|e| Error::Invalid(format!("label time column: {e}")))?;
    let times = times
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| Error::Invalid("label time is not a timestamp".into()))?;
    let mut keep: Vec<u32> = Vec::new();
    for row in 0..batch.num_rows() {
        if !times.is_null(row) {
            keep.push(row as u32);
        }
    }
    let unmatched = total.saturating_sub(keep.len());
    if let Some(until) = options.until {
        keep.retain(|&r| times.value(r as usize) <= until);
    }
    let indices = UInt32Array::from(keep.clone());
    let mut keys = BTreeMap::new();
    for e in &entities {
        let col = batch
            .column_by_name(e)
            .ok_or_else(|| Error::Invalid(format!("labels have no `{e}` column")))?;
        let col = Column::new(col.as_ref());
        keys.insert(
            e.clone(),
            keep.iter().map(|&r| col.key(r as usize)).collect(),
        );
    }
    let label = take(
        batch
            .column_by_name("label")
            .ok_or_else(|| Error::Invalid("label column missing".into()))?
            .as_ref(),
        &indices,
        None,
    )?;
    let id = match id {
        Some(name) => {
            let col = batch
                .column_by_name("id")
                .map(|c| Column::new(c.as_ref()))
                .ok_or_else(|| Error::Invalid("id column missing".into()))?;
            Some((name, keep.iter().map(|&r| col.key(r as usize)).collect()))
        }
        None => None,
    };
    Ok(Labels {
        times: keep.iter().map(|&r| times.value(r as usize)).collect(),
        keys,
        label,
        label_name: label_column,
        id,
        join,
        unmatched,
    })
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One event of an entity, as the aggregation needs it.
struct Ev {
    partition: i32,
    offset: i64,
    time: i64,
    inputs: Vec<Value>,
}

/// The view's values for each label row (`keys[i]` at `times[i]`).
async fn view_features(
    ctx: &SessionContext,
    view: &Arc<FeatureView>,
    source: &quiver_core::schema::SourceSchema,
    keys: &[String],
    times: &[i64],
) -> Result<Vec<Vec<Value>>> {
    let plan = ViewPlan::new(Arc::clone(view));
    let mut out = vec![Vec::new(); keys.len()];
    // Label rows per entity, by time.
    let mut wanted: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        wanted.entry(k.as_str()).or_default().push(i);
    }
    for rows in wanted.values_mut() {
        rows.sort_by_key(|&i| times[i]);
    }
    let raw = format!("raw_{}", source.name);
    if ctx.table_exist(raw.as_str())? {
        fold_events(ctx, &plan, source, &raw, &mut wanted, times, &mut out).await?;
    }
    // Entities without any event read an empty state.
    let empty = plan.new_state();
    for rows in wanted.values() {
        for &i in rows {
            out[i] = plan.read(&empty, times[i]);
        }
    }
    Ok(out)
}

/// Folds the events of every entity in `wanted` (removing it) into its rows of `out`.
async fn fold_events(
    ctx: &SessionContext,
    plan: &ViewPlan,
    source: &quiver_core::schema::SourceSchema,
    raw: &str,
    wanted: &mut HashMap<&str, Vec<usize>>,
    times: &[i64],
    out: &mut [Vec<Value>],
) -> Result<()> {
    let view = plan.view();
    // The labelled entities' events, grouped by entity in arrival order.
    let entity_list: Vec<String> = wanted
        .keys()
        .map(|k| format!("'{}'", k.replace('\'', "''")))
        .collect();
    let mut select = vec![
        format!("\"{}\" AS entity", view.entity),
        format!("\"{PARTITION_COLUMN}\""),
        format!("\"{OFFSET_COLUMN}\""),
        format!("\"{}\" AS t", source.event_time),
    ];
    for (i, agg) in view.aggregations.iter().enumerate() {
        if let Some(c) = &agg.column {
            select.push(format!("\"{c}\" AS in_{i}"));
        }
    }
    // Only the labelled entities' events (a plain scan when there are very many).
    let filter = if entity_list.len() <= 20_000 {
        format!(
            "WHERE \"{}\" IN ({})",
            view.entity,
            if entity_list.is_empty() {
                "NULL".to_string()
            } else {
                entity_list.join(", ")
            }
        )
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT {} FROM {raw} {filter} \
         ORDER BY entity, \"{PARTITION_COLUMN}\", \"{OFFSET_COLUMN}\"",
        select.join(", "),
    );
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    let mut current: Option<String> = None;
    let mut events: Vec<Ev> = Vec::new();
    let mut fold = |entity: &str, events: &[Ev]| {
        if let Some(rows) = wanted.remove(entity) {
            fold_entity(plan, events, &rows, times, out);
        }
    };
    while let Some(batch) = stream.next().await.transpose()? {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .map(|c| Column::new(c.as_ref()))
                .ok_or_else(|| Error::Invalid(format!("raw events without `{name}`")))
        };
        let entity = column("entity")?;
        let partitions = column(PARTITION_COLUMN)?;
        let offsets = column(OFFSET_COLUMN)?;
        let ts = column("t")?;
        let inputs: Vec<Option<Column<'_>>> = view
            .aggregations
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.column.as_ref().and_then(|_| {
                    batch
                        .column_by_name(&format!("in_{i}"))
                        .map(|c| Column::new(c.as_ref()))
                })
            })
            .collect();
        for row in 0..batch.num_rows() {
            let key = entity.key(row);
            if current.as_deref() != Some(key.as_str()) {
                if let Some(prev) = current.take() {
                    fold(&prev, &events);
                }
                events.clear();
                current = Some(key);
            }
            let (Some(partition), Some(offset), Some(time)) =
                (partitions.int(row), offsets.int(row), ts.int(row))
            else {
                continue;
            };
            // One row per offset: a listing taken while a compaction merged segments (the
            // merged one in place, its parts not removed yet) holds some twice.
            if events
                .last()
                .is_some_and(|e| e.partition == partition as i32 && e.offset == offset)
            {
                continue;
            }
            events.push(Ev {
                partition: partition as i32,
                offset,
                time,
                inputs: inputs
                    .iter()
                    .map(|c| c.map_or(Value::Null, |c| c.value(row)))
                    .collect(),
            });
        }
    }
    if let Some(prev) = current.take() {
        fold(&prev, &events);
    }
    Ok(())
}

/// One shard's state over the events with `event_time ≤ T`, kept incrementally while the newly
/// included events all come after the included ones in arrival order.
struct ShardAsOf<'a> {
    partition: i32,
    events: Vec<&'a Ev>,
    included: Vec<bool>,
    last_included: Option<usize>,
    state: EntityState,
}

/// Computes the rows `rows` (label indices sorted by time) of one entity from its events
/// (sorted by partition, offset).
fn fold_entity(
    plan: &ViewPlan,
    events: &[Ev],
    rows: &[usize],
    times: &[i64],
    out: &mut [Vec<Value>],
) {
    let mut shards: Vec<ShardAsOf<'_>> = Vec::new();
    for e in events {
        match shards.last_mut() {
            Some(s) if s.partition == e.partition => s.events.push(e),
            _ => shards.push(ShardAsOf {
                partition: e.partition,
                events: vec![e],
                included: Vec::new(),
                last_included: None,
                state: plan.new_state(),
            }),
        }
    }
    for s in &mut shards {
        s.included = vec![false; s.events.len()];
    }
    let mut scratch = Vec::new();
    for &i in rows {
        let t = times[i];
        for s in &mut shards {
            let new: Vec<usize> = (0..s.events.len())
                .filter(|&j| !s.included[j] && s.events[j].time <= t)
                .collect();
            if new.is_empty() {
                continue;
            }
            let append = s.last_included.is_none_or(|last| new[0] > last);
            for &j in &new {
                s.included[j] = true;
            }
            if append {
                for &j in &new {
                    apply(plan, &mut s.state, s.events[j], &mut scratch);
                }
            } else {
                // An earlier event joins the set (it arrived after a later one): fold the
                // shard again from scratch, in arrival order.
                s.state = plan.new_state();
                for j in 0..s.events.len() {
                    if s.included[j] {
                        apply(plan, &mut s.state, s.events[j], &mut scratch);
                    }
                }
            }
            s.last_included = s.included.iter().rposition(|&b| b);
        }
        let states: Vec<&EntityState> = shards
            .iter()
            .filter(|s| s.last_included.is_some())
            .map(|s| &s.state)
            .collect();
        out[i] = plan.read_shards(&states, t);
    }
}

fn apply(plan: &ViewPlan, state: &mut EntityState, e: &Ev, scratch: &mut Vec<u8>) {
    plan.apply(state, e.time, (e.partition, e.offset), &e.inputs, scratch);
}

/// Where a training row's features come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Vectors {
    /// Recomputed from the raw store over exactly the entity's events with `event_time ≤ T`
    /// (`../shared/DESIGN.md`, "Point in time").
    #[default]
    Recomputed,
    /// The vectors the worker logged for the labelled events, the ones it scored them with:
    /// what serving saw, other partitions' shards as it read them included (labels that name
    /// their events by id only). A model trained on them meets in production the inputs it was
    /// trained on; a vector never holds an event that arrived after its own.
    Logged,
}

impl Vectors {
    /// Its name on the command line and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Vectors::Recomputed => "recomputed",
            Vectors::Logged => "logged",
        }
    }
}

/// The logged vector of every event of `view` with an id, by id (the latest row of an id
/// logged twice).
async fn logged_vectors(
    ctx: &SessionContext,
    view: &FeatureView,
    source: &quiver_core::schema::SourceSchema,
    wanted: &std::collections::HashSet<&str>,
) -> Result<HashMap<String, Vec<Value>>> {
    let id = source.id.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "logged vectors need events with an id: source `{}` declares none",
            source.name
        ))
    })?;
    let table = format!("features_{}", view.name);
    if !ctx.table_exist(table.as_str())? {
        return Ok(HashMap::new());
    }
    let columns: Vec<String> = [id.as_str(), PARTITION_COLUMN, OFFSET_COLUMN]
        .into_iter()
        .chain(view.aggregations.iter().map(|a| a.name.as_str()))
        .map(|c| format!("\"{c}\""))
        .collect();
    let sql = format!("SELECT {} FROM {table}", columns.join(", "));
    // Per id: the row at the highest (partition, offset) (an id logged twice: a duplicate
    // event), with its values.
    let mut out: HashMap<String, ((i64, i64), Vec<Value>)> = HashMap::new();
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .map(|c| Column::new(c.as_ref()))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "the feature log of `{}` has no `{name}` column (was the view changed? \
                         backfill it first)",
                        view.name
                    ))
                })
        };
        let ids = column(id)?;
        let partitions = column(PARTITION_COLUMN)?;
        let offsets = column(OFFSET_COLUMN)?;
        let features = view
            .aggregations
            .iter()
            .map(|a| column(&a.name))
            .collect::<Result<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            let key = ids.key(row);
            if key.is_empty() || !wanted.contains(key.as_str()) {
                continue;
            }
            let at = (
                partitions.int(row).unwrap_or(i64::MIN),
                offsets.int(row).unwrap_or(i64::MIN),
            );
            if out.get(&key).is_some_and(|(held, _)| *held >= at) {
                continue;
            }
            out.insert(key, (at, features.iter().map(|c| c.value(row)).collect()));
        }
    }
    Ok(out
        .into_iter()
        .map(|(id, (_, values))| (id, values))
        .collect())
}
