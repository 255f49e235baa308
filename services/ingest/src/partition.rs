//! One assigned partition: the messages polled but not through the hot path yet, the window
//! the next durable flush will write, and where each of its watermarks stands.
//!
//! Offsets only move forward through: polled → processed (hot path: state, vectors,
//! predictions produced) → cut (handed to the flusher) → flushed (durable in the raw store,
//! feature log, score store and Redis) → committed. Independently, every message a hot batch
//! produced must be acknowledged ([`AckQueue`]). The committable offset is
//! `min(flushed, acknowledged) + 1`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use quiver_features::log::LogBuilder;
use quiver_store::Tail;

use crate::claims::ClaimBook;
use crate::delivery::AckQueue;
use crate::scores::ScoreRow;

/// Backoff bounds of a failing partition.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One polled message: offset, broker timestamp, key and payload ranges in the arena.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: Option<i64>,
    key: Option<(usize, usize)>,
    payload: Option<(usize, usize)>,
}

/// Messages polled and not processed yet, copied out of librdkafka.
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    arena: Vec<u8>,
    pub(crate) spans: Vec<Span>,
}

impl Buffer {
    pub(crate) fn push(
        &mut self,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
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
            timestamp_ms,
            key,
            payload,
        });
    }

    pub(crate) fn key(&self, span: &Span) -> Option<&[u8]> {
        span.key.map(|(s, l)| &self.arena[s..s + l])
    }

    pub(crate) fn payload(&self, span: &Span) -> Option<&[u8]> {
        span.payload.map(|(s, l)| &self.arena[s..s + l])
    }

    pub(crate) fn bytes(&self) -> usize {
        self.arena.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.arena.clear();
        self.spans.clear();
    }

    /// Splits off the messages past `offset` (a copy), leaving those at or below it.
    pub(crate) fn split_after(&mut self, offset: i64) -> Buffer {
        let at = self.spans.partition_point(|s| s.offset <= offset);
        let mut tail = Buffer::default();
        for span in &self.spans[at..] {
            tail.push(
                span.offset,
                span.timestamp_ms,
                self.key(span),
                self.payload(span),
            );
        }
        self.spans.truncate(at);
        tail
    }
}

/// What the next durable flush of the partition writes.
#[derive(Debug)]
pub(crate) struct Window {
    /// Offsets covered (rejected events included).
    pub(crate) range: Option<(i64, i64)>,
    pub(crate) opened: Option<Instant>,
    pub(crate) events: usize,
    pub(crate) bytes: usize,
    /// Decoded events, in offset order.
    pub(crate) raw: Vec<RecordBatch>,
    /// Feature-log rows, per view.
    pub(crate) logs: Vec<LogBuilder>,
    /// Predictions.
    pub(crate) scores: Vec<ScoreRow>,
    /// Entities whose shard of this partition changed, per view.
    pub(crate) touched: Vec<HashSet<String>>,
}

impl Window {
    /// An empty window for a source whose views have these feature-log schemas (and whose
    /// events have an id, or not).
    pub(crate) fn new(views: &[SchemaRef], with_id: bool) -> Self {
        Self {
            range: None,
            opened: None,
            events: 0,
            bytes: 0,
            raw: Vec::new(),
            logs: views.iter().map(|s| LogBuilder::new(s, with_id)).collect(),
            scores: Vec::new(),
            touched: vec![HashSet::new(); views.len()],
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.range.is_none()
    }

    /// Extends the window over offsets `first..=last` of one hot batch.
    pub(crate) fn extend(&mut self, first: i64, last: i64, events: usize, bytes: usize) {
        self.range = Some(self.range.map_or((first, last), |(f, _)| (f, last)));
        self.opened.get_or_insert_with(Instant::now);
        self.events += events;
        self.bytes += bytes;
    }

    /// Whether the window should be flushed now.
    pub(crate) fn due(&self, max_events: usize, max_bytes: usize, max_age: Duration) -> bool {
        self.events >= max_events
            || self.bytes >= max_bytes
            || self.opened.is_some_and(|o| o.elapsed() >= max_age)
    }
}

/// Where a partition whose group commit is `committed` resumes, given how far Redis holds each
/// view's shards of it (`applied`, `None`: never recorded): below the commit when Redis lost
/// writes of offsets the commit covers, so they are applied again.
pub(crate) fn resume_from(committed: i64, applied: &[Option<i64>]) -> i64 {
    applied
        .iter()
        .flatten()
        .map(|last| last + 1)
        .fold(committed, i64::min)
}

/// Why a partition is not consuming.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// Retried from the last commit at `at`.
    Retrying { at: Instant, backoff: Duration },
    /// Stopped until the worker restarts.
    Stopped(String),
}

/// One assigned partition.
#[derive(Debug)]
pub(crate) struct PartitionState {
    /// Incremented at every (re)start of the partition; flushes of an older epoch are void.
    pub(crate) epoch: u64,
    /// What the flusher compares its job's epoch with.
    pub(crate) fence: Arc<AtomicU64>,
    pub(crate) incoming: Buffer,
    pub(crate) window: Window,
    /// Offsets below this are ignored (polled again after a seek).
    pub(crate) next_offset: i64,
    /// The last offset the raw store holds (its dead letters were sent).
    pub(crate) raw_durable: i64,
    /// The last offsets of the raw segments a replay goes through, in order: windows are cut
    /// there, so what a replay publishes is each segment's end state, as the batch replay
    /// rebuilds it.
    pub(crate) boundaries: VecDeque<i64>,
    /// Where consumption (re)started: the group's committed offset, or below it when Redis
    /// lost shards written before it ([`resume_from`]).
    pub(crate) start: i64,
    /// Offsets below this were processed, predicted and committed before the (re)start: a
    /// replay of them rebuilds online state only (nothing is scored, logged or sent again).
    pub(crate) settled_below: i64,
    /// Per view, how far Redis holds this partition's shards, as last recorded or read (empty:
    /// not read). Each flush checks Redis still holds it before moving it.
    pub(crate) applied: Vec<Option<i64>>,
    pub(crate) processed_through: i64,
    /// Last offsets of flushes in flight, oldest first.
    pub(crate) flushing: VecDeque<i64>,
    pub(crate) flushed_through: i64,
    pub(crate) acks: AckQueue,
    /// The offset this member last committed (the next one to read).
    pub(crate) committed_next: Option<i64>,
    pub(crate) claims: ClaimBook,
    pub(crate) failure: Option<Failure>,
}

impl PartitionState {
    /// A partition consumed from `start` where the raw store stands at `raw`.
    pub(crate) fn new(
        start: i64,
        raw: &Tail,
        claims: ClaimBook,
        window: Window,
        fence: Arc<AtomicU64>,
    ) -> Self {
        let epoch = fence.fetch_add(1, Ordering::AcqRel) + 1;
        Self {
            epoch,
            fence,
            incoming: Buffer::default(),
            window,
            next_offset: start,
            raw_durable: raw.durable,
            boundaries: raw.ends.iter().copied().filter(|l| *l >= start).collect(),
            start,
            settled_below: start,
            applied: Vec::new(),
            processed_through: start - 1,
            flushing: VecDeque::new(),
            flushed_through: start - 1,
            acks: AckQueue::default(),
            committed_next: None,
            claims,
            failure: None,
        }
    }

    /// Whether the open window lies inside a raw segment being replayed (whose end it has not
    /// reached): such a window is cut only at that end, so what it publishes is the version the
    /// batch replay seals there.
    pub(crate) fn inside_replayed_segment(&self) -> bool {
        self.window
            .range
            .zip(self.boundaries.front())
            .is_some_and(|((_, last), boundary)| last < *boundary)
    }

    /// Voids everything not flushed: pending flushes are fenced off.
    pub(crate) fn fence_off(&self) {
        self.fence.fetch_add(1, Ordering::AcqRel);
    }

    /// The offset that can be committed now, if it moved past the last commit.
    pub(crate) fn committable(&mut self) -> Result<Option<i64>, String> {
        let acked = self.acks.advance()?.unwrap_or(self.start - 1);
        let acked = if self.acks.is_empty() {
            self.processed_through.max(acked)
        } else {
            acked
        };
        let next = self.flushed_through.min(acked) + 1;
        let last = self.committed_next.unwrap_or(self.start);
        Ok((next > last).then_some(next))
    }

    /// Whether every processed offset is flushed.
    pub(crate) fn drained(&self) -> bool {
        self.window.is_empty() && self.flushing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn state(start: i64, raw_segments: &[i64]) -> PartitionState {
        PartitionState::new(
            start,
            &Tail {
                durable: raw_segments.iter().copied().max().unwrap_or(-1),
                ends: raw_segments.to_vec(),
            },
            ClaimBook::default(),
            Window::new(&[], false),
            Arc::new(AtomicU64::new(0)),
        )
    }

    #[test]
    fn a_partition_resumes_below_its_commit_only_when_redis_lost_shards_the_commit_covers() {
        assert_eq!(resume_from(500, &[Some(499), Some(499)]), 500, "all there");
        assert_eq!(
            resume_from(500, &[Some(700)]),
            500,
            "a newer owner got further"
        );
        assert_eq!(resume_from(500, &[None, None]), 500, "nothing recorded yet");
        assert_eq!(resume_from(500, &[]), 500);
        assert_eq!(
            resume_from(500, &[Some(499), Some(299)]),
            300,
            "the view furthest behind decides"
        );
        assert_eq!(resume_from(0, &[Some(-1)]), 0);
    }

    #[test]
    fn a_window_inside_a_replayed_raw_segment_waits_for_its_end() {
        // The raw store holds segments ending at 99 and 199; consumption resumes at 50.
        let mut s = state(50, &[99, 199]);
        assert!(
            !s.inside_replayed_segment(),
            "an empty window is not inside anything"
        );
        s.window.extend(50, 80, 31, 3_100);
        assert!(s.inside_replayed_segment());
        s.window.extend(81, 99, 19, 1_900);
        assert!(
            !s.inside_replayed_segment(),
            "at the segment's end it may be cut"
        );
        // Past every raw segment: the live path's thresholds apply again.
        let mut live = state(200, &[99, 199]);
        live.window.extend(200, 250, 51, 5_100);
        assert!(!live.inside_replayed_segment());
    }
}
