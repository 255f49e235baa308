//! The worker's state, shared by the poll loop and the consumer's callbacks (which run inside
//! `poll`, on the same thread): partitions, caches, clients, and the steps that move a
//! partition's offsets forward — durable cuts, flush completions, commits — or reset it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::compute::concat_batches;
use quiver_core::Config;
use quiver_online::OnlineStore;
use quiver_store::SegmentStore;
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::TopicPartitionList;
use tracing::warn;

use crate::cache::{Ownership, ViewCache};
use crate::consumer::WorkerConsumer;
use crate::delivery::Producer;
use crate::deploy::Models;
use crate::flusher::{FlushJob, Flushed, Flusher, Job, Outcome, ViewShards};
use crate::hot::FeatureNames;
use crate::partition::{Failure, PartitionState, Window};
use crate::sources::BoundSource;
use crate::{Error, Result, events, scores};

mod commits;
mod rebalance;
mod restarts;

/// How many recent prediction latencies [`IngestStats`] keeps.
const RECENT: usize = 5_000;
/// How long a revoke or a shutdown waits for its partitions' flushes and acknowledgements.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often eviction looks at the caches.
const EVICT_EVERY: Duration = Duration::from_millis(200);

/// A cooperative stop flag, set from a signal handler or a test.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Asks the loop to drain, commit and return.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a stop was asked for.
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Live counters, readable while the worker runs (progress lines, tests).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Valid events written to the raw store.
    pub events: AtomicU64,
    /// Events sent to dead-letter topics (malformed, or impossible to score).
    pub dead_letters: AtomicU64,
    /// Raw segments written.
    pub segments: AtomicU64,
    /// Raw segment bytes written.
    pub bytes: AtomicU64,
    /// Replayed events the raw store already held.
    pub replay_skipped: AtomicU64,
    /// Successful commits.
    pub commits: AtomicU64,
    /// Events folded into online feature state (all views).
    pub features_applied: AtomicU64,
    /// Events dropped from aggregation for lateness (all views).
    pub features_late: AtomicU64,
    /// Predictions acknowledged by the broker.
    pub predictions: AtomicU64,
    /// Events that went to the dead-letter topic because they could not be scored.
    pub scoring_dead_letters: AtomicU64,
    /// Events of scored sources processed without a prediction (no model deployed yet, or a
    /// replay past the state with nothing claimed).
    pub unscored: AtomicU64,
    /// Recent event (broker timestamp) → prediction acknowledged latencies (seconds).
    pub latencies: Mutex<VecDeque<f64>>,
    /// The production model in use.
    pub model: Mutex<Option<String>>,
    /// Partitions assigned now (every source).
    pub assigned: AtomicU64,
}

impl IngestStats {
    /// (p50, p99) of the recent prediction latencies, in seconds.
    pub fn latency_percentiles(&self) -> Option<(f64, f64)> {
        let recent = self.latencies.lock().ok()?;
        if recent.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = recent.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some((at(0.5), at(0.99)))
    }

    pub(crate) fn prediction_acked(&self, latency: Option<f64>) {
        self.predictions.fetch_add(1, Ordering::Relaxed);
        if let Some(latency) = latency
            && let Ok(mut recent) = self.latencies.lock()
        {
            recent.push_back(latency);
            while recent.len() > RECENT {
                recent.pop_front();
            }
        }
    }

    pub(crate) fn dead_letter(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn scoring_dead_letter(&self) {
        self.dead_letter();
        self.scoring_dead_letters.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn replayed(&self, n: u64) {
        self.replay_skipped.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters of a finished run.
    pub fn report(&self) -> IngestReport {
        IngestReport {
            events: self.events.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            segments: self.segments.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn features(&self, applied: u64, late: u64) {
        self.features_applied.fetch_add(applied, Ordering::Relaxed);
        self.features_late.fetch_add(late, Ordering::Relaxed);
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestReport {
    /// Valid events written.
    pub events: u64,
    /// Dead letters sent.
    pub dead_letters: u64,
    /// Segments written.
    pub segments: u64,
}

/// The worker's settings, from `[ingest]` and `[score]`.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) max_events: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_age: Duration,
    pub(crate) commit_every: Duration,
    pub(crate) claim_ttl: Duration,
    pub(crate) predictions_topic: String,
}

impl Settings {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            max_events: config.ingest.segment_max_events,
            max_bytes: config.ingest.segment_max_bytes,
            max_age: Duration::from_millis(config.ingest.segment_max_age_ms),
            commit_every: Duration::from_millis(config.ingest.commit_interval_ms),
            claim_ttl: Duration::from_secs(config.score.claim_ttl_s),
            predictions_topic: config.kafka.topic(&config.score.predictions_topic),
        }
    }
}

/// Everything the poll loop and the callbacks share.
pub(crate) struct Worker {
    pub(crate) sources: Vec<BoundSource>,
    by_topic: HashMap<String, usize>,
    pub(crate) partitions: BTreeMap<(usize, i32), PartitionState>,
    /// Fences outlive assignments, so a flush of an earlier assignment stays void.
    fences: HashMap<(usize, i32), Arc<AtomicU64>>,
    /// Per source, per view.
    pub(crate) caches: Vec<Vec<ViewCache>>,
    /// Per source.
    pub(crate) ownership: Vec<Ownership>,
    /// Per source: `<view>__<feature>` of each view, then of each lookup.
    pub(crate) feature_names: Vec<FeatureNames>,
    /// The hot path's connection (cache misses, claims).
    pub(crate) online: OnlineStore,
    pub(crate) producer: Producer,
    flusher: Flusher,
    pub(crate) raw: SegmentStore,
    pub(crate) models: Models,
    pub(crate) settings: Settings,
    pub(crate) stats: Arc<IngestStats>,
    pub(crate) scratch: Vec<u8>,
    /// Partitions that failed and must stop being fetched.
    to_pause: Vec<(usize, i32)>,
    /// Partitions whose applied watermarks Redis lost altogether while this worker ran (it held
    /// none where this worker had recorded one): their next start re-applies from the topic's
    /// first offset, since nothing in Redis says how far it holds them.
    wiped: HashSet<(usize, i32)>,
    last_commit: Instant,
    /// Per view and partition (source, partition), the latest event time its durable online
    /// state holds (µs): freshness.
    freshest: BTreeMap<(String, usize, i32), i64>,
    last_evict: Instant,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("partitions", &self.partitions.len())
            .finish_non_exhaustive()
    }
}

/// The clients and stores a worker is built from.
pub(crate) struct Parts {
    pub(crate) sources: Vec<BoundSource>,
    pub(crate) online: OnlineStore,
    pub(crate) producer: Producer,
    pub(crate) flusher: Flusher,
    pub(crate) raw: SegmentStore,
    pub(crate) models: Models,
}

impl Worker {
    pub(crate) fn new(config: &Config, parts: Parts, stats: Arc<IngestStats>) -> Self {
        let by_topic = parts
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| (s.topic.clone(), i))
            .collect();
        let bound = config.ingest.state_cache_entities;
        let caches = parts
            .sources
            .iter()
            .map(|s| s.views.iter().map(|_| ViewCache::new(bound)).collect())
            .collect();
        let feature_names = parts
            .sources
            .iter()
            .map(|s| {
                let own = s.views.iter().map(|v| v.view());
                let other = s.lookups.iter().map(|l| l.view());
                FeatureNames::new(
                    own.chain(other)
                        .map(|v| {
                            v.feature_names()
                                .map(|f| format!("{}__{f}", v.name))
                                .collect()
                        })
                        .collect(),
                )
            })
            .collect();
        Self {
            ownership: parts.sources.iter().map(|_| Ownership::default()).collect(),
            sources: parts.sources,
            by_topic,
            partitions: BTreeMap::new(),
            fences: HashMap::new(),
            caches,
            feature_names,
            online: parts.online,
            producer: parts.producer,
            flusher: parts.flusher,
            raw: parts.raw,
            models: parts.models,
            settings: Settings::new(config),
            stats,
            scratch: Vec::new(),
            to_pause: Vec::new(),
            wiped: HashSet::new(),
            last_commit: Instant::now(),
            freshest: BTreeMap::new(),
            last_evict: Instant::now(),
        }
    }

    /// The physical topics to subscribe to.
    pub(crate) fn topics(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.topic.clone()).collect()
    }

    /// Every topic the worker writes or reads.
    pub(crate) fn needed_topics(&self) -> Vec<String> {
        let mut out = self.topics();
        out.extend(self.sources.iter().map(|s| s.dlq_topic.clone()));
        if self.sources.iter().any(|s| s.scored) {
            out.push(self.settings.predictions_topic.clone());
        }
        out
    }

    pub(crate) fn set_partition_count(&mut self, topic: &str, n: usize) {
        if let Some(&s) = self.by_topic.get(topic) {
            self.ownership[s].set_partition_count(n);
        }
    }

    /// Buffers one polled message (ignored if its partition is not consuming, or below the
    /// offset it resumed from). Returns its partition's buffered bytes.
    pub(crate) fn accept(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        let Some(&s) = self.by_topic.get(topic) else {
            return;
        };
        let Some(state) = self.partitions.get_mut(&(s, partition)) else {
            return;
        };
        if state.failure.is_some() || offset < state.next_offset {
            return;
        }
        state.incoming.push(offset, timestamp_ms, key, payload);
        state.next_offset = offset + 1;
    }

    /// An empty window of a source.
    fn window(&self, s: usize) -> Window {
        let source = &self.sources[s];
        let schemas: Vec<arrow::datatypes::SchemaRef> = source
            .views
            .iter()
            .map(|v| Arc::clone(v.log_schema()))
            .collect();
        Window::new(&schemas, source.schema.id.is_some())
    }

    /// Hands a partition's window to the flusher if it is due (or `force`). A window inside a
    /// raw segment being replayed is never due: it is cut exactly at the segment's end (see
    /// `hot_replay_aware`), so the versions it publishes are the ones the batch replay seals.
    pub(crate) fn cut(&mut self, s: usize, p: i32, force: bool) -> Result<()> {
        let due = self.partitions.get(&(s, p)).is_some_and(|state| {
            state.failure.is_none()
                && !state.window.is_empty()
                && (force
                    || (!state.inside_replayed_segment()
                        && state.window.due(
                            self.settings.max_events,
                            self.settings.max_bytes,
                            self.settings.max_age,
                        )))
        });
        if !due {
            return Ok(());
        }
        let fresh = self.window(s);
        let Some(state) = self.partitions.get_mut(&(s, p)) else {
            return Ok(());
        };
        let window = std::mem::replace(&mut state.window, fresh);
        let Some(range) = window.range else {
            return Ok(());
        };
        let source = &self.sources[s];
        let raw = concat_batches(source.decoder.schema(), &window.raw)
            .map_err(quiver_core::Error::from)?;
        let mut logs = Vec::with_capacity(source.views.len());
        let mut shards = Vec::with_capacity(source.views.len());
        for (v, (view, log)) in source.views.iter().zip(window.logs).enumerate() {
            logs.push((view.view().name.clone(), log.finish()?));
            let cache = &self.caches[s][v];
            shards.push(ViewShards {
                view: view.view().name.clone(),
                ttl: source.ttls[v],
                shards: window.touched[v]
                    .iter()
                    .filter_map(|k| Some((k.clone(), cache.snapshot(k, p)?)))
                    .collect(),
            });
        }
        let scores = if source.scored {
            let schema = scores::schema(&source.schema);
            Some(
                scores::batch(&schema, source.schema.keys.len(), p, &window.scores)
                    .map_err(quiver_core::Error::from)?,
            )
        } else {
            None
        };
        let job = FlushJob {
            source: s,
            source_name: source.schema.name.clone(),
            partition: p,
            epoch: state.epoch,
            fence: Arc::clone(&state.fence),
            range,
            date: chrono::Utc::now().date_naive(),
            raw,
            logs,
            scores,
            shards,
            applied_before: if state.applied.is_empty() {
                vec![None; source.views.len()]
            } else {
                state.applied.clone()
            },
        };
        self.flusher.submit(Job::Flush(Box::new(job)))?;
        state.flushing.push_back(range.1);
        state.applied = vec![Some(range.1); source.views.len()];
        Ok(())
    }

    /// Cuts every partition whose window is due.
    pub(crate) fn cut_due(&mut self) {
        let keys: Vec<(usize, i32)> = self.partitions.keys().copied().collect();
        for (s, p) in keys {
            if let Err(error) = self.cut(s, p, false) {
                self.fail(s, p, error);
            }
        }
    }

    /// Takes in finished flushes.
    pub(crate) fn completions(&mut self) {
        while let Some(done) = self.flusher.done() {
            self.on_flushed(done);
        }
    }

    fn on_flushed(&mut self, done: Flushed) {
        let (s, p) = (done.source, done.partition);
        let Some(state) = self.partitions.get_mut(&(s, p)) else {
            return;
        };
        // A flush of an older epoch, or one finishing after its partition failed, is void.
        if done.epoch != state.epoch || state.failure.is_some() {
            return;
        }
        match done.outcome {
            Outcome::Written(report) => {
                // Other partitions' reads now see these shards as written.
                for view in &done.shards {
                    let latest = view
                        .shards
                        .iter()
                        .filter_map(|(_, shard)| shard.state.event_time_max)
                        .max();
                    if let Some(latest) = latest {
                        let key = (view.view.clone(), s, p);
                        let known = self.freshest.entry(key).or_insert(latest);
                        *known = (*known).max(latest);
                    }
                }
                for (v, view) in done.shards.into_iter().enumerate() {
                    self.caches[s][v].publish(p, view.shards);
                }
                state.flushing.pop_front();
                state.flushed_through = state.flushed_through.max(done.last);
                state.raw_durable = state.raw_durable.max(done.last);
                self.stats
                    .events
                    .fetch_add(report.raw_rows as u64, Ordering::Relaxed);
                self.stats
                    .segments
                    .fetch_add(report.raw_segments as u64, Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(report.raw_bytes, Ordering::Relaxed);
            }
            Outcome::Fenced => {}
            Outcome::Failed(Error::OnlineStateBehind {
                view,
                partition,
                expected,
                held,
            }) => {
                // Redis lost writes of every partition, not only this one's: the others check
                // theirs now rather than at their next flush (an idle one may have none soon).
                let found_on = format!("{view}/{partition}");
                if held < 0 {
                    // Nothing at all where a mark was: Redis lost everything (a new, empty
                    // Redis behind the same address); every partition starts over.
                    self.wiped.extend(self.partitions.keys().copied());
                }
                let others: Vec<(usize, i32)> = self
                    .partitions
                    .iter()
                    .filter(|(k, st)| **k != (s, p) && st.failure.is_none())
                    .map(|(k, _)| *k)
                    .collect();
                let error = Error::OnlineStateBehind {
                    view,
                    partition,
                    expected,
                    held,
                };
                self.fail(s, p, error);
                for (s, p) in others {
                    let found_on = found_on.clone();
                    self.fail(s, p, Error::RedisLostWrites { found_on });
                }
            }
            Outcome::Failed(error) => self.fail(s, p, error),
        }
    }

    /// Evicts from the caches what is durable and least recently used (at most every
    /// [`EVICT_EVERY`]).
    pub(crate) fn evict(&mut self) {
        if self.last_evict.elapsed() < EVICT_EVERY {
            return;
        }
        self.last_evict = Instant::now();
        for (s, source) in self.sources.iter().enumerate() {
            for (v, view) in source.views.iter().enumerate() {
                let partitions = &self.partitions;
                let own = &self.ownership[s];
                let evicted = self.caches[s][v].evict(|p| {
                    if !own.owns(p) {
                        return None;
                    }
                    Some(partitions.get(&(s, p)).map_or(-1, |st| st.flushed_through))
                });
                let name = &view.view().name;
                if evicted > 0 {
                    events::cache_evictions(name, evicted);
                }
                events::cache_size(name, self.caches[s][v].len());
            }
        }
    }

    /// Why the worker is not ready, if it is not.
    pub(crate) fn unready(&self) -> Option<String> {
        self.partitions.iter().find_map(|((s, p), st)| {
            let name = &self.sources[*s].schema.name;
            match &st.failure {
                Some(Failure::Retrying { .. }) => {
                    Some(format!("{name}/{p}: retrying after a transient failure"))
                }
                Some(Failure::Stopped(why)) => Some(format!("{name}/{p}: stopped: {why}")),
                None => None,
            }
        })
    }

    /// The production model in use, for progress lines.
    pub(crate) fn publish_model(&self) {
        if let Ok(mut m) = self.stats.model.lock() {
            let current = self.models.production().map(str::to_string);
            if *m != current {
                *m = current;
            }
        }
    }
}

/// Pauses (`false`) or resumes (`true`) consumption of one partition.
pub(crate) fn resume(consumer: &WorkerConsumer, topic: &str, partition: i32, on: bool) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let result = if on {
        consumer.resume(&tpl)
    } else {
        consumer.pause(&tpl)
    };
    if let Err(error) = result {
        warn!(topic, partition, %error, resume = on, "cannot change the partition's pause state");
    }
}
