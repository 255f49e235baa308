//! Commits: the committable offset of every partition, sent synchronously on the interval and
//! when partitions are handed over; a confirmed commit releases the claims below it.

use std::sync::atomic::Ordering;
use std::time::Instant;

use quiver_online::Floor;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::warn;

use super::Worker;
use crate::consumer::WorkerConsumer;
use crate::flusher::Job;
use crate::{Error, events};

impl Worker {
    /// Commits every partition whose offsets moved, every `ingest.commit_interval_ms`. The
    /// commit is synchronous (a broker round trip, once per interval): claims are deleted only
    /// once the broker confirmed the offsets past them ([`Worker::committed`]).
    pub(crate) fn commit_due(&mut self, consumer: &WorkerConsumer) {
        if self.last_commit.elapsed() < self.settings.commit_every {
            return;
        }
        self.last_commit = Instant::now();
        self.freshness();
        let keys: Vec<(usize, i32)> = self.partitions.keys().copied().collect();
        self.commit(consumer, &keys);
    }

    /// Each view's freshness: now − the latest event time of the stalest partition this worker
    /// owns (a partition that stopped moving shows, rather than hiding behind busy ones).
    fn freshness(&mut self) {
        let partitions = &self.partitions;
        self.freshest
            .retain(|(_, s, p), _| partitions.contains_key(&(*s, *p)));
        let mut stalest: std::collections::BTreeMap<&str, i64> = Default::default();
        for ((view, _, _), latest) in &self.freshest {
            let oldest = stalest.entry(view).or_insert(*latest);
            *oldest = (*oldest).min(*latest);
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        for (view, latest) in stalest {
            events::freshness(view, (now_us - latest) as f64 / 1e6);
        }
    }

    /// Commits what `keys` cover, synchronously: a broker round trip, on the interval and when
    /// a partition is handed over or the worker stops. (An asynchronous commit would never be
    /// confirmed: librdkafka reports a manual one only to an `offset_commit_cb`, which
    /// rust-rdkafka's event-based consumer does not set — and without the confirmation a retry
    /// would resume from the assignment and claims would never be deleted.)
    pub(super) fn commit(&mut self, consumer: &WorkerConsumer, keys: &[(usize, i32)]) {
        let mut tpl = TopicPartitionList::new();
        let mut failed = Vec::new();
        for &(s, p) in keys {
            let Some(state) = self.partitions.get_mut(&(s, p)) else {
                continue;
            };
            if state.failure.is_some() {
                continue;
            }
            match state.committable() {
                Ok(Some(next)) => {
                    // Infallible for a fresh (topic, partition) with a concrete offset.
                    let _ =
                        tpl.add_partition_offset(&self.sources[s].topic, p, Offset::Offset(next));
                }
                Ok(None) => {}
                Err(detail) => failed.push((s, p, detail)),
            }
        }
        for (s, p, detail) in failed {
            let topic = self.settings.predictions_topic.clone();
            self.fail(s, p, Error::Delivery { topic, detail });
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => self.committed(&tpl),
            Err(error) => events::committed(false, tpl.count(), Some(&error)),
        }
    }

    /// A commit was confirmed: claims below it are deleted.
    fn committed(&mut self, tpl: &TopicPartitionList) {
        let mut moved = 0;
        for elem in tpl.elements() {
            let (Some(&s), Offset::Offset(next)) = (self.by_topic.get(elem.topic()), elem.offset())
            else {
                continue;
            };
            let p = elem.partition();
            let Some(state) = self.partitions.get_mut(&(s, p)) else {
                continue;
            };
            if state.committed_next.is_some_and(|c| c >= next) {
                continue;
            }
            moved += 1;
            state.committed_next = Some(next);
            events::commit_lag(
                &self.sources[s].schema.name,
                p,
                state.processed_through + 1 - next,
            );
            let ranges = state.claims.release(next);
            if self.sources[s].scored {
                // Raises the floor even when no claim is deleted: no member may decide these
                // offsets any more.
                let job = Job::Release {
                    source_name: self.sources[s].schema.name.clone(),
                    partition: p,
                    committed_next: next,
                    floor: Floor::Raise,
                    ranges,
                    ttl: self.settings.claim_ttl,
                };
                if let Err(error) = self.flusher.submit(job) {
                    warn!(%error, "cannot queue the deletion of committed claims");
                }
            }
        }
        if moved > 0 {
            events::committed(true, moved, None);
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
        }
    }
}
