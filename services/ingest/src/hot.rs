//! The hot path: one poll batch of one partition, from bytes to predictions on the wire,
//! without waiting for any fsync.
//!
//! 1. **decode** the batch in one vectorised pass; malformed events go to the dead-letter topic;
//! 2. **apply** each event to its entities' shards in the state cache (read from Redis on a
//!    miss) and read the **vector as of the event** for every view
//!    (`EntityShards::vector_as_of`: its own shard right after the event, merged with the
//!    entity's other partitions' shards as they stand, whose offsets make the row's clock);
//! 3. **score** that vector with the deployed model(s) — unless a claim of the event exists, in
//!    which case its recorded vector and verdict are repeated;
//! 4. **claim** the batch's new decisions in Redis (one round trip; a range another member
//!    claimed first is adopted instead);
//! 5. **produce** the predictions (and scoring dead letters), and add the batch to the
//!    partition's durable window: raw rows, feature-log rows, score rows, touched entities.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use chrono::Utc;
use quiver_core::decode::RawEvent;
use quiver_features::log::LogRow;
use quiver_features::{Applied, Value};
use quiver_models::FeatureLookup;

use crate::claims::{LookupVector, ViewVector};
use crate::delivery::{Acks, Origin};
use crate::partition::Buffer;
use crate::prediction::Outcome;
use crate::worker::Worker;
use crate::{Error, Result, events};

mod decisions;
mod reads;

use decisions::adopt;

/// One valid event on its way through the hot path.
#[derive(Debug)]
struct Draft {
    /// Its span in the polled buffer.
    span: usize,
    offset: i64,
    time: i64,
    event_id: String,
    /// The source's entity keys, in declaration order.
    keys: Vec<String>,
    /// Per view; `None` when the state is already past the event (a replay with no claim).
    vectors: Vec<Option<ViewVector>>,
    lookups: Vec<LookupVector>,
    outcome: Option<Outcome>,
    prediction_time: i64,
    /// Recorded in Redis (by this member or another).
    claimed: bool,
    /// Repeated from another member's claim (a replay or a race).
    repeated: bool,
    /// Below the partition's commit (Redis lost its shards): applied to the state only.
    settled: bool,
}

/// A source's feature names (`<view>__<feature>`): per view, then per lookup, and where each
/// is found, so a model reads a feature without searching for it.
#[derive(Debug, Default)]
pub(crate) struct FeatureNames {
    by_view: Vec<Vec<String>>,
    index: HashMap<String, (usize, usize)>,
}

impl FeatureNames {
    /// From each view's names, then each lookup's (a name given twice reads the first).
    pub(crate) fn new(by_view: Vec<Vec<String>>) -> Self {
        let mut index = HashMap::new();
        for (v, names) in by_view.iter().enumerate() {
            for (i, name) in names.iter().enumerate() {
                index.entry(name.clone()).or_insert((v, i));
            }
        }
        Self { by_view, index }
    }

    /// Each view's names, then each lookup's.
    pub(crate) fn by_view(&self) -> &[Vec<String>] {
        &self.by_view
    }
}

/// A draft's features as a model reads them.
struct DraftFeatures<'a> {
    names: &'a FeatureNames,
    draft: &'a Draft,
}

impl FeatureLookup for DraftFeatures<'_> {
    fn feature(&self, name: &str) -> Option<&Value> {
        let &(v, i) = self.names.index.get(name)?;
        let views = self.draft.vectors.len();
        let values = match self.draft.vectors.get(v) {
            Some(vector) => vector.as_ref()?.values.as_slice(),
            None => self.draft.lookups.get(v - views)?.values.as_slice(),
        };
        values.get(i)
    }
}

impl DraftFeatures<'_> {
    /// Each view's values, then each lookup's, in the order of `names`.
    fn values(&self) -> impl Iterator<Item = &[Value]> {
        self.draft
            .vectors
            .iter()
            .map(|v| v.as_ref().map_or(&[][..], |v| v.values.as_slice()))
            .chain(self.draft.lookups.iter().map(|l| l.values.as_slice()))
    }
}

impl Worker {
    /// Runs the hot path over every partition with polled messages; a partition that fails is
    /// paused (and retried or stopped, by the error's classification).
    pub(crate) fn hot(&mut self) {
        let ready: Vec<(usize, i32)> = self
            .partitions
            .iter()
            .filter(|(_, s)| !s.incoming.is_empty() && s.failure.is_none())
            .map(|(k, _)| *k)
            .collect();
        for (s, p) in ready {
            if let Err(error) = self.hot_replay_aware(s, p) {
                self.fail(s, p, error);
            }
        }
    }

    /// Runs the hot path over a partition's polled messages; where they cross the end of a raw
    /// segment a replay goes through, the window is cut right there.
    fn hot_replay_aware(&mut self, s: usize, p: i32) -> Result<()> {
        loop {
            let Some(state) = self.partitions.get_mut(&(s, p)) else {
                return Ok(());
            };
            let last = state.incoming.spans.last().map(|x| x.offset);
            while state
                .boundaries
                .front()
                .is_some_and(|b| *b < state.processed_through + 1)
            {
                state.boundaries.pop_front();
            }
            let boundary = state.boundaries.front().copied();
            let (Some(last), Some(boundary)) = (last, boundary) else {
                return self.hot_partition(s, p);
            };
            if last < boundary {
                return self.hot_partition(s, p);
            }
            let rest = state.incoming.split_after(boundary);
            if !state.incoming.is_empty() {
                self.hot_partition(s, p)?;
            }
            let Some(state) = self.partitions.get_mut(&(s, p)) else {
                return Ok(());
            };
            state.processed_through = state.processed_through.max(boundary);
            state.boundaries.pop_front();
            state.incoming = rest;
            self.cut(s, p, true)?;
            let Some(state) = self.partitions.get(&(s, p)) else {
                return Ok(());
            };
            if state.incoming.is_empty() {
                return Ok(());
            }
        }
    }

    fn hot_partition(&mut self, s: usize, p: i32) -> Result<()> {
        let started = Instant::now();
        let Some(state) = self.partitions.get_mut(&(s, p)) else {
            return Ok(());
        };
        let buffer = std::mem::take(&mut state.incoming);
        let (Some(first), Some(last)) = (
            buffer.spans.first().map(|x| x.offset),
            buffer.spans.last().map(|x| x.offset),
        ) else {
            return Ok(());
        };
        let oldest_ms = buffer.spans.iter().filter_map(|x| x.timestamp_ms).min();
        let source = &self.sources[s];
        let raw: Vec<RawEvent<'_>> = buffer
            .spans
            .iter()
            .map(|x| RawEvent {
                offset: x.offset,
                payload: buffer.payload(x),
            })
            .collect();
        let decoded = source
            .decoder
            .decode(p, &raw, Utc::now().timestamp_millis())?;
        let acks = Arc::new(Acks::default());

        // Malformed events: dead letters, once (those the raw store holds were sent before).
        let replayed = buffer
            .spans
            .iter()
            .take_while(|x| x.offset <= state.raw_durable)
            .count() as u64;
        if replayed > 0 {
            events::replay_skipped(&source.schema.name, replayed);
            self.stats.replayed(replayed);
        }
        for r in &decoded.rejected {
            let Some(span) = buffer.spans.get(r.index) else {
                continue;
            };
            if span.offset > state.raw_durable {
                self.producer.dead_letter(
                    &source.dlq_topic,
                    Origin {
                        topic: &source.topic,
                        partition: p,
                        offset: span.offset,
                    },
                    buffer.key(span),
                    buffer.payload(span),
                    r.reason.code(),
                    &r.detail,
                    &acks,
                )?;
                events::dead_letter(
                    &source.schema.name,
                    p,
                    span.offset,
                    r.reason.code(),
                    &r.detail,
                );
                self.stats.dead_letter();
            }
        }
        let batch = decoded.batch;
        state
            .window
            .extend(first, last, buffer.spans.len(), buffer.bytes());
        state.window.raw.push(batch.clone());

        let mut drafts = self.drafts(s, p, &batch, &buffer)?;
        let keys = self.apply_views(s, p, &batch, &mut drafts)?;
        let features_done = started.elapsed();
        self.lookups(s, &mut drafts)?;
        self.score(s, &mut drafts);
        let score_done = started.elapsed();
        self.claim(s, p, &mut drafts)?;
        self.emit(s, p, &mut drafts, &buffer, &acks)?;
        self.log(s, p, &batch, &keys, &drafts)?;
        let produced = started.elapsed();

        let Some(state) = self.partitions.get_mut(&(s, p)) else {
            return Ok(());
        };
        state.processed_through = last;
        state.acks.push(last, acks);
        if let Some(ts) = oldest_ms {
            let waited =
                (Utc::now().timestamp_millis() - ts).max(0) as f64 / 1e3 - produced.as_secs_f64();
            events::hot_batch(
                waited + features_done.as_secs_f64(),
                waited + score_done.as_secs_f64(),
                waited + produced.as_secs_f64(),
            );
        }
        Ok(())
    }

    /// One draft per valid event (a row of `batch`, matched to its message by offset), with
    /// claims another member recorded attached.
    fn drafts(
        &mut self,
        s: usize,
        p: i32,
        batch: &RecordBatch,
        buffer: &Buffer,
    ) -> Result<Vec<Draft>> {
        let source = &self.sources[s];
        let schema = &source.schema;
        let column = |name: &str| {
            batch
                .schema()
                .index_of(name)
                .ok()
                .map(|i| quiver_features::log::Column::new(batch.column(i).as_ref()))
        };
        let id_col = schema.id.as_deref().and_then(column);
        let key_cols: Vec<_> = schema.keys.iter().map(|k| column(k)).collect();
        let time_col = column(&schema.event_time)
            .ok_or_else(|| Error::Fatal("the event time column is missing".into()))?;
        let offset_col = column(quiver_core::schema::OFFSET_COLUMN)
            .ok_or_else(|| Error::Fatal("the offset column is missing".into()))?;
        let state = self
            .partitions
            .get_mut(&(s, p))
            .ok_or_else(|| Error::Fatal("partition vanished".into()))?;
        let mut drafts = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let offset = offset_col
                .int(row)
                .ok_or_else(|| Error::Fatal("an event has no offset".into()))?;
            let span = buffer
                .spans
                .binary_search_by_key(&offset, |x| x.offset)
                .map_err(|_| Error::Fatal(format!("decoded offset {offset} was not polled")))?;
            let claim = state.claims.take(offset);
            let mut draft = Draft {
                span,
                offset,
                time: time_col.int(row).unwrap_or_default(),
                event_id: id_col
                    .map(|c| c.key(row))
                    .unwrap_or_else(|| format!("{p}-{offset}")),
                keys: key_cols
                    .iter()
                    .map(|c| c.map(|c| c.key(row)).unwrap_or_default())
                    .collect(),
                vectors: vec![None; source.views.len()],
                lookups: Vec::new(),
                outcome: None,
                prediction_time: 0,
                claimed: false,
                repeated: false,
                settled: offset < state.settled_below,
            };
            if let Some(claim) = claim {
                adopt(&mut draft, claim);
            }
            drafts.push(draft);
        }
        Ok(drafts)
    }

    /// Applies the batch to every view's state and reads each event's vectors (a draft with a
    /// claim keeps the claimed ones). Returns each view's entity keys, by row.
    fn apply_views<'b>(
        &mut self,
        s: usize,
        p: i32,
        batch: &'b RecordBatch,
        drafts: &mut [Draft],
    ) -> Result<Vec<Vec<Cow<'b, str>>>> {
        let mut all_keys = Vec::with_capacity(self.sources[s].views.len());
        for v in 0..self.sources[s].views.len() {
            let view = &self.sources[s].views[v];
            let plan = Arc::clone(view.plan());
            let name = view.view().name.clone();
            let rows = view.rows(batch)?;
            let mut inputs = Vec::new();
            let keys: Vec<Cow<'b, str>> = (0..rows.len()).map(|r| rows.entity_str(r)).collect();
            self.load(s, p, v, &keys)?;
            let (mut applied, mut late, mut replayed) = (0u64, 0u64, 0u64);
            let cache = &mut self.caches[s][v];
            let state = self
                .partitions
                .get_mut(&(s, p))
                .ok_or_else(|| Error::Fatal("partition vanished".into()))?;
            let touched = &mut state.window.touched[v];
            for (row, draft) in drafts.iter_mut().enumerate() {
                let key: &str = &keys[row];
                let entry = cache
                    .get_mut(key)
                    .ok_or_else(|| Error::Fatal("an entity was not loaded".into()))?;
                rows.inputs(row, &mut inputs);
                let outcome = entry.shards.apply(
                    &plan,
                    p,
                    draft.offset,
                    draft.time,
                    &inputs,
                    &mut self.scratch,
                );
                let Some(outcome) = outcome else {
                    replayed += 1;
                    continue;
                };
                if !touched.contains(key) {
                    touched.insert(key.to_string());
                }
                match outcome {
                    Applied::Applied => applied += 1,
                    Applied::Late => late += 1,
                }
                if draft.vectors[v].is_none() && !draft.settled {
                    let clock = entry.shards.clock(p);
                    let (as_of, values) = entry.shards.vector_as_of(&plan, p, draft.time, None);
                    draft.vectors[v] = Some(ViewVector {
                        as_of,
                        late: outcome == Applied::Late,
                        clock,
                        values,
                    });
                }
            }
            events::features_applied(&name, applied, late, replayed);
            self.stats.features(applied, late);
            all_keys.push(keys);
        }
        Ok(all_keys)
    }

    /// Adds the batch's feature-log rows to the window: each event's vector per view, as
    /// scored (or as claimed).
    fn log(
        &mut self,
        s: usize,
        p: i32,
        batch: &RecordBatch,
        keys: &[Vec<Cow<'_, str>>],
        drafts: &[Draft],
    ) -> Result<()> {
        let state = self
            .partitions
            .get_mut(&(s, p))
            .ok_or_else(|| Error::Fatal("partition vanished".into()))?;
        let mut clock = String::new();
        for (v, view) in self.sources[s].views.iter().enumerate() {
            let rows = view.rows(batch)?;
            let log = &mut state.window.logs[v];
            for (row, draft) in drafts.iter().enumerate() {
                let Some(vector) = &draft.vectors[v] else {
                    continue;
                };
                quiver_features::log::write_clock(&vector.clock, &mut clock);
                log.push(
                    LogRow {
                        entity: &keys[v][row],
                        id: rows.id(row).as_ref(),
                        time: draft.time,
                        partition: p,
                        offset: draft.offset,
                        as_of: vector.as_of,
                        late: vector.late,
                        clock: &clock,
                    },
                    &vector.values,
                );
            }
        }
        Ok(())
    }
}
