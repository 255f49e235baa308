//! Pipeline state: per-partition buffers, flushes into the raw store, committable offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, Int64Array};
use arrow::compute::filter_record_batch;
use quiver_core::SourceSchema;
use quiver_core::config::Config;
use quiver_core::decode::{EventDecoder, RawEvent};
use quiver_kafka::headers;
use quiver_store::{RawStore, SegmentId};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use crate::events;
use crate::features::Features;
use crate::service::{DlqContext, IngestStats};
use crate::{Error, Result};

/// How long a dead-letter batch may take to be acknowledged.
const DLQ_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Backoff bounds for failing flushes.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One buffered message: offset, key and payload ranges in the arena.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: i64,
    key: Option<(usize, usize)>,
    payload: Option<(usize, usize)>,
}

#[derive(Debug, Default)]
struct Buffer {
    arena: Vec<u8>,
    spans: Vec<Span>,
    opened: Option<Instant>,
}

impl Buffer {
    fn push(&mut self, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let mut put = |bytes: Option<&[u8]>| {
            bytes.map(|b| {
                let start = self.arena.len();
                self.arena.extend_from_slice(b);
                (start, b.len())
            })
        };
        let key = put(key);
        let payload = put(payload);
        self.spans.push(Span {
            offset,
            key,
            payload,
        });
        self.opened.get_or_insert_with(Instant::now);
    }

    fn slice(&self, range: Option<(usize, usize)>) -> Option<&[u8]> {
        range.map(|(start, len)| &self.arena[start..start + len])
    }

    fn last_offset(&self) -> Option<i64> {
        self.spans.last().map(|s| s.offset)
    }

    fn clear(&mut self) {
        self.arena.clear();
        self.spans.clear();
        self.opened = None;
    }
}

/// State of one assigned partition.
#[derive(Debug)]
struct PartitionState {
    /// Last offset already in the raw store (-1: none).
    durable_through: i64,
    /// Offset to commit next (last durable + 1), once something was flushed by this member.
    commit_next: Option<i64>,
    /// Offset last committed by this member.
    committed_next: Option<i64>,
    /// Last offset consumed.
    consumed_through: i64,
    buffer: Buffer,
    /// Set while flushes fail: the partition is paused until this instant.
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// One source being ingested.
#[derive(Debug)]
struct SourceState {
    schema: Arc<SourceSchema>,
    topic: String,
    dlq_topic: String,
    decoder: EventDecoder,
    partitions: BTreeMap<i32, PartitionState>,
}

/// A topic and partition.
pub(crate) type TopicPartition = (String, i32);

/// Partitions whose consumption must be paused (flushes failing) or resumed (recovered).
#[derive(Debug, Default)]
pub(crate) struct PauseChanges {
    pub(crate) pause: Vec<TopicPartition>,
    pub(crate) resume: Vec<TopicPartition>,
}

/// Everything the loop and the rebalance callback share.
pub(crate) struct Pipeline {
    sources: Vec<SourceState>,
    by_topic: HashMap<String, usize>,
    store: RawStore,
    features: Features,
    dlq: ThreadedProducer<DlqContext>,
    stats: Arc<IngestStats>,
    max_events: usize,
    max_bytes: usize,
    max_age: Duration,
    /// A condition the loop must stop on (set from the callback, where errors cannot propagate).
    pub(crate) fatal: Option<String>,
    failpoint: Failpoint,
}

/// A crash on purpose, for tests of recovery: `QUIVER_FAILPOINT=raw-written:N` aborts the
/// process (no flush, no commit, like `kill -9`) right after the N-th raw segment is durable
/// and before that micro-batch's features are written — the window between the raw store and
/// the online store that a replay must repair. Unset in production.
#[derive(Debug, Default)]
struct Failpoint {
    armed: Option<(String, u64)>,
    hits: u64,
}

impl Failpoint {
    const RAW_WRITTEN: &'static str = "raw-written";

    fn from_env() -> Self {
        let armed = std::env::var("QUIVER_FAILPOINT").ok().and_then(|v| {
            let (name, n) = v.split_once(':')?;
            Some((name.to_string(), n.parse().ok()?))
        });
        Self { armed, hits: 0 }
    }

    fn hit(&mut self, name: &str) {
        if let Some((armed, n)) = &self.armed
            && armed == name
        {
            self.hits += 1;
            if self.hits >= *n {
                tracing::error!(
                    failpoint = name,
                    hits = self.hits,
                    "failpoint reached: aborting"
                );
                std::process::abort();
            }
        }
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    pub(crate) fn new(
        config: &Config,
        sources: &[Arc<SourceSchema>],
        store: RawStore,
        features: Features,
        dlq: ThreadedProducer<DlqContext>,
        stats: Arc<IngestStats>,
    ) -> Self {
        let sources: Vec<SourceState> = sources
            .iter()
            .map(|s| SourceState {
                topic: config.kafka.topic(&s.topic),
                dlq_topic: config.kafka.dlq_topic(&s.topic),
                decoder: EventDecoder::new(s.clone(), config.ingest.max_event_bytes),
                schema: s.clone(),
                partitions: BTreeMap::new(),
            })
            .collect();
        let by_topic = sources
            .iter()
            .enumerate()
            .map(|(i, s)| (s.topic.clone(), i))
            .collect();
        Self {
            sources,
            by_topic,
            store,
            features,
            dlq,
            stats,
            max_events: config.ingest.segment_max_events,
            max_bytes: config.ingest.segment_max_bytes,
            max_age: Duration::from_millis(config.ingest.segment_max_age_ms),
            fatal: None,
            failpoint: Failpoint::from_env(),
        }
    }

    /// The physical topics to subscribe to.
    pub(crate) fn topics(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.topic.clone()).collect()
    }

    /// The physical dead-letter topics.
    pub(crate) fn dlq_topics(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.dlq_topic.clone()).collect()
    }

    fn assigned(&self) -> usize {
        self.sources.iter().map(|s| s.partitions.len()).sum()
    }

    /// Takes newly assigned partitions, reading what the raw store already holds.
    pub(crate) fn assign(&mut self, tpl: &TopicPartitionList) {
        let mut durable_cache: HashMap<usize, BTreeMap<i32, i64>> = HashMap::new();
        let mut list = Vec::new();
        for elem in tpl.elements() {
            let Some(&index) = self.by_topic.get(elem.topic()) else {
                continue;
            };
            let durable = match durable_cache.get(&index) {
                Some(d) => d,
                None => match self.store.durable_offsets(&self.sources[index].schema.name) {
                    Ok(d) => durable_cache.entry(index).or_insert(d),
                    Err(e) => {
                        self.fatal = Some(format!("cannot read the raw store on assignment: {e}"));
                        return;
                    }
                },
            };
            let durable_through = durable.get(&elem.partition()).copied().unwrap_or(-1);
            self.sources[index].partitions.insert(
                elem.partition(),
                PartitionState {
                    durable_through,
                    commit_next: None,
                    committed_next: None,
                    consumed_through: durable_through,
                    buffer: Buffer::default(),
                    retry_at: None,
                    backoff: BACKOFF_MIN,
                },
            );
            list.push((elem.topic().to_string(), elem.partition()));
        }
        if let Err(e) = self.features.refresh_logged() {
            self.fatal = Some(format!("cannot read the offline store on assignment: {e}"));
            return;
        }
        events::assignment("assign", &list, self.assigned());
    }

    /// Drains and commits revoked partitions, then forgets them.
    pub(crate) fn revoke<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        tpl: &TopicPartitionList,
    ) {
        let mut list = Vec::new();
        for elem in tpl.elements() {
            let Some(&index) = self.by_topic.get(elem.topic()) else {
                continue;
            };
            if let Err(error) = self.flush(index, elem.partition()) {
                // Not committed, so the next owner re-reads it: nothing is lost.
                tracing::warn!(topic = elem.topic(), partition = elem.partition(), %error, "drain on revoke failed; the next owner will replay");
            }
            list.push((elem.topic().to_string(), elem.partition()));
        }
        self.commit(consumer);
        for (topic, partition) in &list {
            if let Some(&index) = self.by_topic.get(topic) {
                self.sources[index].partitions.remove(partition);
            }
        }
        events::assignment("revoke", &list, self.assigned());
    }

    /// Buffers one message. Returns true if its partition is due for a size-triggered flush.
    pub(crate) fn accept(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Option<(usize, i32)> {
        let index = *self.by_topic.get(topic)?;
        let source = &mut self.sources[index];
        let state = source.partitions.get_mut(&partition)?;
        // Replays (offsets the raw store already holds) are still buffered: the online state and
        // the feature log may not have them yet (a crash between the raw write and the Redis
        // write). Each store skips what it already holds when the buffer is flushed. Only a
        // message seen twice in the same buffer is dropped here.
        if state.buffer.last_offset().is_some_and(|l| offset <= l) {
            return None;
        }
        state.buffer.push(offset, key, payload);
        state.consumed_through = offset;
        let full = state.buffer.spans.len() >= self.max_events
            || state.buffer.arena.len() >= self.max_bytes;
        (full && state.retry_at.is_none()).then_some((index, partition))
    }

    /// Flushes one partition: decode, dead-letter, durable raw segment, features (online state
    /// and feature log), then advance the commit offset. After a crash the buffer may start
    /// with offsets some stores already hold; each store skips those.
    pub(crate) fn flush(&mut self, index: usize, partition: i32) -> Result<()> {
        let started = Instant::now();
        let has_views = self.features.has_views(index);
        let source = &mut self.sources[index];
        let Some(state) = source.partitions.get_mut(&partition) else {
            return Ok(());
        };
        let (Some(first), Some(last)) = (
            state.buffer.spans.first().map(|s| s.offset),
            state.buffer.last_offset(),
        ) else {
            return Ok(());
        };
        let raw_durable = state.durable_through;
        let replayed = state
            .buffer
            .spans
            .iter()
            .take_while(|s| s.offset <= raw_durable)
            .count() as u64;
        if replayed > 0 {
            events::replay_skipped(&source.schema.name, replayed);
            self.stats
                .replay_skipped
                .fetch_add(replayed, Ordering::Relaxed);
        }
        if last <= raw_durable && !has_views {
            state.commit_next = Some(last + 1);
            state.buffer.clear();
            return Ok(());
        }
        let buffer = &state.buffer;
        let raw: Vec<RawEvent<'_>> = buffer
            .spans
            .iter()
            .map(|s| RawEvent {
                offset: s.offset,
                payload: buffer.slice(s.payload),
            })
            .collect();
        let now = chrono::Utc::now();
        let outcome = source
            .decoder
            .decode(partition, &raw, now.timestamp_millis())?;

        let fresh_rejections: Vec<_> = outcome
            .rejected
            .iter()
            .filter(|r| buffer.spans[r.index].offset > raw_durable)
            .collect();
        if !fresh_rejections.is_empty() {
            let failures_before = self.dlq.context().failures.load(Ordering::Acquire);
            let partition_text = partition.to_string();
            for rejection in &fresh_rejections {
                let span = buffer.spans[rejection.index];
                let offset_text = span.offset.to_string();
                let hdrs = OwnedHeaders::new()
                    .insert(Header {
                        key: headers::REASON,
                        value: Some(rejection.reason.code()),
                    })
                    .insert(Header {
                        key: headers::ERROR,
                        value: Some(rejection.detail.as_str()),
                    })
                    .insert(Header {
                        key: headers::SOURCE_TOPIC,
                        value: Some(source.topic.as_str()),
                    })
                    .insert(Header {
                        key: headers::SOURCE_PARTITION,
                        value: Some(partition_text.as_str()),
                    })
                    .insert(Header {
                        key: headers::SOURCE_OFFSET,
                        value: Some(offset_text.as_str()),
                    });
                let mut record: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(&source.dlq_topic)
                    .payload(buffer.slice(span.payload).unwrap_or_default())
                    .headers(hdrs);
                if let Some(key) = buffer.slice(span.key) {
                    record = record.key(key);
                }
                loop {
                    match self.dlq.send(record) {
                        Ok(()) => break,
                        Err((e, back))
                            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                        {
                            std::thread::sleep(Duration::from_millis(5));
                            record = back;
                        }
                        Err((e, _)) => {
                            return Err(Error::DeadLetter {
                                topic: source.dlq_topic.clone(),
                                detail: e.to_string(),
                            });
                        }
                    }
                }
                events::dead_letter(
                    &source.schema.name,
                    partition,
                    span.offset,
                    rejection.reason.code(),
                    &rejection.detail,
                );
            }
            self.dlq
                .flush(DLQ_ACK_TIMEOUT)
                .map_err(|e| Error::DeadLetter {
                    topic: source.dlq_topic.clone(),
                    detail: e.to_string(),
                })?;
            let failures_after = self.dlq.context().failures.load(Ordering::Acquire);
            if failures_after != failures_before {
                return Err(Error::DeadLetter {
                    topic: source.dlq_topic.clone(),
                    detail: format!("{} deliveries failed", failures_after - failures_before),
                });
            }
        }

        if last > raw_durable {
            let fresh = if first > raw_durable {
                outcome.batch.clone()
            } else {
                let offsets = outcome
                    .batch
                    .column_by_name(quiver_core::schema::OFFSET_COLUMN)
                    .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                    .ok_or_else(|| Error::Fatal("offset column missing".into()))?;
                let keep: BooleanArray =
                    offsets.iter().map(|o| o.map(|o| o > raw_durable)).collect();
                filter_record_batch(&outcome.batch, &keep).map_err(quiver_core::Error::from)?
            };
            let id = SegmentId {
                partition,
                first_offset: first.max(raw_durable + 1),
                last_offset: last,
            };
            let written =
                self.store
                    .write_segment(&source.schema.name, now.date_naive(), id, &fresh)?;
            let rows = fresh.num_rows();
            if written.created {
                events::segment_written(
                    &source.schema.name,
                    partition,
                    id.first_offset,
                    last,
                    rows,
                    written.bytes,
                    started.elapsed(),
                );
                self.stats.events.fetch_add(rows as u64, Ordering::Relaxed);
                self.stats.segments.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes.fetch_add(written.bytes, Ordering::Relaxed);
                self.stats
                    .dead_letters
                    .fetch_add(fresh_rejections.len() as u64, Ordering::Relaxed);
                self.failpoint.hit(Failpoint::RAW_WRITTEN);
            }
            state.durable_through = last;
        }

        if has_views {
            let report = self.features.process(
                index,
                partition,
                &outcome.batch,
                (first, last),
                now.date_naive(),
            )?;
            self.stats
                .features_applied
                .fetch_add(report.applied, Ordering::Relaxed);
            self.stats
                .features_late
                .fetch_add(report.late, Ordering::Relaxed);
        }
        state.commit_next = Some(last + 1);
        state.buffer.clear();
        Ok(())
    }

    /// Flushes what is due by age or size; retries paused partitions whose backoff elapsed.
    pub(crate) fn flush_due(&mut self, force: bool) -> PauseChanges {
        let now = Instant::now();
        let mut due = Vec::new();
        for (index, source) in self.sources.iter().enumerate() {
            for (&partition, state) in &source.partitions {
                if state.buffer.spans.is_empty() {
                    continue;
                }
                let aged = state
                    .buffer
                    .opened
                    .is_some_and(|o| now.duration_since(o) >= self.max_age);
                let full = state.buffer.spans.len() >= self.max_events
                    || state.buffer.arena.len() >= self.max_bytes;
                let retry_ok = state.retry_at.is_none_or(|at| now >= at);
                if retry_ok && (force || aged || full) {
                    due.push((index, partition));
                }
            }
        }
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        for (index, partition) in due {
            let result = self.flush(index, partition);
            let source = &mut self.sources[index];
            let topic = source.topic.clone();
            let name = source.schema.name.clone();
            let Some(state) = source.partitions.get_mut(&partition) else {
                continue;
            };
            match result {
                Ok(()) => {
                    if state.retry_at.take().is_some() {
                        state.backoff = BACKOFF_MIN;
                        resume.push((topic, partition));
                    }
                }
                Err(error) => {
                    let wait = state.backoff;
                    events::flush_failed(&name, partition, &error, wait);
                    if state.retry_at.is_none() {
                        pause.push((topic, partition));
                    }
                    state.retry_at = Some(now + wait);
                    state.backoff = (wait * 2).min(BACKOFF_MAX);
                }
            }
        }
        PauseChanges { pause, resume }
    }

    /// Whether any partition is failing its flushes.
    pub(crate) fn degraded(&self) -> bool {
        self.sources
            .iter()
            .any(|s| s.partitions.values().any(|p| p.retry_at.is_some()))
    }

    /// Commits every partition whose durable offset moved past what this member committed.
    pub(crate) fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let mut tpl = TopicPartitionList::new();
        for source in &self.sources {
            for (&partition, state) in &source.partitions {
                if let Some(next) = state.commit_next
                    && state.committed_next != Some(next)
                {
                    // Infallible for a fresh (topic, partition) with a concrete offset.
                    let _ =
                        tpl.add_partition_offset(&source.topic, partition, Offset::Offset(next));
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                events::committed(true, tpl.count(), None);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                for elem in tpl.elements() {
                    let Some(&index) = self.by_topic.get(elem.topic()) else {
                        continue;
                    };
                    let source = &mut self.sources[index];
                    if let (Some(state), Offset::Offset(next)) =
                        (source.partitions.get_mut(&elem.partition()), elem.offset())
                    {
                        state.committed_next = Some(next);
                        events::commit_lag(
                            &source.schema.name,
                            elem.partition(),
                            state.consumed_through + 1 - next,
                        );
                    }
                }
            }
            Err(error) => events::committed(false, tpl.count(), Some(&error)),
        }
    }
}
