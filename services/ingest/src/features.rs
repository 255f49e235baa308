//! Streaming features: each flushed micro-batch of a source partition is folded into the online
//! state of every view of that source, and its as-of vectors are appended to the feature log.
//!
//! Per view and micro-batch, in this order (each step idempotent, so a replay after a crash at
//! any point changes nothing):
//!
//! 1. fetch the shards of every entity the batch touches (one pipelined round trip);
//! 2. apply the events in offset order to the entity's own shard (this partition's field),
//!    skipping offsets at or below the shard's `applied_offset`;
//! 3. for events past the log's durable offset, record the vector as of the event: the merge,
//!    in partition order, of the own shard right after the event and the other partitions'
//!    shards as fetched, read at the merged latest event time; the row's `_clock` names the
//!    other shards' applied offsets, so the vector can be reproduced exactly offline;
//! 4. write the feature-log segment (Parquet, fsynced, named by the batch's offset range);
//! 5. write the changed shards back to Redis (one pipelined round trip) with the view's TTL.
//!
//! Only then does the caller advance the partition's committable offset.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{Schema, SchemaRef};
use chrono::NaiveDate;
use metrics::{counter, histogram};
use quiver_core::schema::{OFFSET_COLUMN, SourceSchema};
use quiver_features::log::{Column, LogBuilder, LogRow, clock_json, log_schema};
use quiver_features::{Applied, EntityState, ReadCache, Value, ViewCatalog, ViewPlan};
use quiver_online::{OnlineWriter, Shard};
use quiver_store::{OfflineStore, SegmentId};
use quiver_telemetry::names;

use crate::{Error, Result};

/// One view being maintained from one source.
struct ViewRuntime {
    plan: ViewPlan,
    entity_col: usize,
    time_col: usize,
    id_col: Option<usize>,
    offset_col: usize,
    input_cols: Vec<Option<usize>>,
    log_schema: SchemaRef,
    /// Last source offset logged, per partition.
    logged: BTreeMap<i32, i64>,
    ttl: Duration,
}

/// What one micro-batch did, for the caller's counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FeatureReport {
    pub(crate) applied: u64,
    pub(crate) late: u64,
}

/// The feature side of the ingest pipeline.
pub(crate) struct Features {
    /// Views per source index.
    views: Vec<Vec<ViewRuntime>>,
    online: Option<OnlineWriter>,
    offline: OfflineStore,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Features")
            .field("views", &self.views.iter().map(Vec::len).sum::<usize>())
            .finish_non_exhaustive()
    }
}

fn column(schema: &Schema, name: &str) -> Result<usize> {
    schema
        .index_of(name)
        .map_err(|_| Error::Fatal(format!("column `{name}` missing from the raw schema")))
}

impl Features {
    /// Sets up the views of `sources`; connects to Redis only if some view needs it.
    pub(crate) fn new(
        config: &quiver_core::Config,
        sources: &[Arc<SourceSchema>],
        catalog: &ViewCatalog,
        offline: OfflineStore,
    ) -> Result<Self> {
        let mut views = Vec::with_capacity(sources.len());
        for source in sources {
            let schema = source.raw_schema();
            let mut runtimes = Vec::new();
            for view in catalog.views.iter().filter(|v| v.source == source.name) {
                let input_cols = view
                    .aggregations
                    .iter()
                    .map(|a| a.column.as_ref().map(|c| column(&schema, c)).transpose())
                    .collect::<Result<Vec<_>>>()?;
                runtimes.push(ViewRuntime {
                    plan: ViewPlan::new(Arc::clone(view)),
                    entity_col: column(&schema, &view.entity)?,
                    time_col: column(&schema, &source.event_time)?,
                    id_col: source
                        .id
                        .as_ref()
                        .map(|id| column(&schema, id))
                        .transpose()?,
                    offset_col: column(&schema, OFFSET_COLUMN)?,
                    input_cols,
                    log_schema: log_schema(view, source),
                    // Read on assignment (`refresh_logged`), before any event of a partition.
                    logged: BTreeMap::new(),
                    ttl: Duration::from_micros(view.ttl.max(1) as u64),
                });
            }
            views.push(runtimes);
        }
        let online = if views.iter().any(|v| !v.is_empty()) {
            Some(
                OnlineWriter::connect(
                    &config.redis.url,
                    &config.redis.key_prefix,
                    Duration::from_millis(config.redis.connect_timeout_ms),
                )
                .map_err(|e| {
                    Error::Redis(format!("cannot reach Redis at {}: {e}", config.redis.url))
                })?,
            )
        } else {
            None
        };
        Ok(Self {
            views,
            online,
            offline,
            scratch: Vec::new(),
        })
    }

    /// Whether any view reads `source`.
    pub(crate) fn has_views(&self, source: usize) -> bool {
        self.views.get(source).is_some_and(|v| !v.is_empty())
    }

    /// Re-reads the feature log's durable offsets (after an assignment).
    pub(crate) fn refresh_logged(&mut self) -> Result<()> {
        for runtime in self.views.iter_mut().flatten() {
            runtime.logged = self.offline.durable_offsets(&runtime.plan.view().name)?;
        }
        Ok(())
    }

    /// Folds one micro-batch of `partition` (rows of the raw schema, offsets `first..=last`).
    pub(crate) fn process(
        &mut self,
        source: usize,
        partition: i32,
        batch: &RecordBatch,
        (first, last): (i64, i64),
        date: NaiveDate,
    ) -> Result<FeatureReport> {
        let mut report = FeatureReport::default();
        let Some(online) = self.online.as_mut() else {
            return Ok(report);
        };
        let Some(runtimes) = self.views.get_mut(source) else {
            return Ok(report);
        };
        for rt in runtimes.iter_mut() {
            let started = Instant::now();
            let view_name = rt.plan.view().name.clone();
            let rows = batch.num_rows();
            let entity_col = Column::new(batch.column(rt.entity_col).as_ref());
            let id_col = rt.id_col.map(|c| Column::new(batch.column(c).as_ref()));
            let input_cols: Vec<Option<Column<'_>>> = rt
                .input_cols
                .iter()
                .map(|c| c.map(|c| Column::new(batch.column(c).as_ref())))
                .collect();
            let times = batch
                .column(rt.time_col)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .ok_or_else(|| Error::Fatal("event time column is not a timestamp".into()))?;
            let offsets = batch
                .column(rt.offset_col)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| Error::Fatal("offset column is not int64".into()))?;

            // 1. Fetch the touched entities' shards.
            let mut index: HashMap<String, usize> = HashMap::new();
            let mut entities: Vec<String> = Vec::new();
            let mut row_entity = Vec::with_capacity(rows);
            for row in 0..rows {
                let key = entity_col.key(row);
                let i = match index.get(&key) {
                    Some(&i) => i,
                    None => {
                        index.insert(key.clone(), entities.len());
                        entities.push(key);
                        entities.len() - 1
                    }
                };
                row_entity.push(i);
            }
            let refs: Vec<&str> = entities.iter().map(String::as_str).collect();
            let fetched = online
                .fetch(&view_name, &refs)
                .map_err(|e| Error::Redis(e.to_string()))?;
            let mut own: Vec<Shard> = Vec::with_capacity(entities.len());
            let mut others: Vec<Vec<(i32, Shard)>> = Vec::with_capacity(entities.len());
            for mut shards in fetched {
                let mine = shards
                    .remove(&partition)
                    .filter(|s| rt.plan.fits(&s.state))
                    .unwrap_or_else(|| Shard {
                        applied_offset: -1,
                        state: rt.plan.new_state(),
                    });
                own.push(mine);
                others.push(
                    shards
                        .into_iter()
                        .filter(|(_, s)| rt.plan.fits(&s.state))
                        .collect(),
                );
            }
            // Per entity, fixed for the batch: the other shards' offsets (`_clock`) and where
            // the own shard sits among them in partition order (they come sorted).
            let clocks: Vec<String> = others
                .iter()
                .map(|o| {
                    let clock: BTreeMap<i32, i64> =
                        o.iter().map(|(p, s)| (*p, s.applied_offset)).collect();
                    clock_json(&clock)
                })
                .collect();
            let own_at: Vec<usize> = others
                .iter()
                .map(|o| o.partition_point(|(p, _)| *p < partition))
                .collect();
            let mut touched = vec![false; entities.len()];
            let mut caches = vec![ReadCache::default(); entities.len()];

            // 2-3. Apply in offset order; log vectors past the durable log offset.
            let logged_through = rt.logged.get(&partition).copied().unwrap_or(-1);
            let mut log = LogBuilder::new(rt.plan.view().aggregations.len(), rt.id_col.is_some());
            let mut inputs = vec![Value::Null; rt.input_cols.len()];
            let mut skipped = 0u64;
            let (mut applied, mut late) = (0u64, 0u64);
            for (row, &e) in row_entity.iter().enumerate() {
                let offset = offsets.value(row);
                let shard = &mut own[e];
                if offset <= shard.applied_offset {
                    skipped += 1;
                    continue;
                }
                for (slot, col) in inputs.iter_mut().zip(&input_cols) {
                    *slot = col.map_or(Value::Null, |c| c.value(row));
                }
                let time = times.value(row);
                let outcome = rt.plan.apply(
                    &mut shard.state,
                    time,
                    (partition, offset),
                    &inputs,
                    &mut self.scratch,
                );
                caches[e].invalidate(time);
                shard.applied_offset = offset;
                touched[e] = true;
                match outcome {
                    Applied::Applied => applied += 1,
                    Applied::Late => late += 1,
                }
                if offset <= logged_through {
                    continue;
                }
                let (before, after) = others[e].split_at(own_at[e]);
                let states: Vec<&EntityState> = before
                    .iter()
                    .map(|(_, s)| &s.state)
                    .chain([&shard.state])
                    .chain(after.iter().map(|(_, s)| &s.state))
                    .collect();
                let (as_of, values) = rt.plan.vector_as_of(&states, time, &mut caches[e]);
                let id = id_col.map(|c| c.value(row));
                log.push(
                    LogRow {
                        entity: &entities[e],
                        id: id.as_ref(),
                        time,
                        partition,
                        offset,
                        as_of,
                        late: outcome == Applied::Late,
                        clock: &clocks[e],
                    },
                    values,
                );
            }
            tracing::debug!(view = %view_name, partition, first, last, rows, applied, late, skipped, logged_through, "features applied");
            if skipped > 0 {
                counter!(names::FEATURES_REPLAY_SKIPPED, "view" => view_name.clone())
                    .increment(skipped);
            }

            // 4. The feature log, for the part of the batch not logged yet.
            if last > logged_through {
                let rows_logged = log.len() as u64;
                let segment = SegmentId {
                    partition,
                    first_offset: first.max(logged_through + 1),
                    last_offset: last,
                };
                let batch = log.finish(&rt.log_schema)?;
                self.offline
                    .write_segment(&view_name, date, segment, &batch)?;
                rt.logged.insert(partition, last);
                counter!(names::FEATURES_LOG_ROWS, "view" => view_name.clone())
                    .increment(rows_logged);
            }

            // 5. The online state.
            let writes: Vec<(&str, i32, &Shard)> = entities
                .iter()
                .zip(&own)
                .zip(&touched)
                .filter(|(_, t)| **t)
                .map(|((e, s), _)| (e.as_str(), partition, s))
                .collect();
            online
                .write(&view_name, rt.ttl, &writes)
                .map_err(|e| Error::Redis(e.to_string()))?;
            counter!(names::FEATURES_APPLIED, "view" => view_name.clone()).increment(applied);
            if late > 0 {
                counter!(names::FEATURES_LATE, "view" => view_name.clone()).increment(late);
            }
            report.applied += applied;
            report.late += late;
            histogram!(names::FEATURES_BATCH_SECONDS, "view" => view_name)
                .record(started.elapsed().as_secs_f64());
        }
        Ok(report)
    }
}
