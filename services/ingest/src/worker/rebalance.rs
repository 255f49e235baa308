//! Rebalances: partitions assigned (each started where the group and Redis say), revoked
//! (drained, flushed, acknowledged and committed first) or lost (dropped without writing).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{DRAIN_TIMEOUT, Worker};
use crate::claims::ClaimBook;
use crate::consumer::WorkerConsumer;
use crate::events;
use crate::partition::{BACKOFF_MIN, Failure, PartitionState};

impl Worker {
    /// Takes newly assigned partitions: each starts from the group's committed offset, its
    /// claims and raw-store watermark read now (a partition whose reads fail starts paused and
    /// retries).
    pub(crate) fn assign(&mut self, consumer: &WorkerConsumer, tpl: &TopicPartitionList) {
        let committed = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .ok();
        let mut list = Vec::new();
        for elem in tpl.elements() {
            let Some(&s) = self.by_topic.get(elem.topic()) else {
                continue;
            };
            let p = elem.partition();
            let start = committed
                .as_ref()
                .and_then(|c| c.find_partition(elem.topic(), p))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(0);
            match self.start_partition(s, p, start) {
                Ok(mut state) => {
                    if state.start < start {
                        // Consumption must start below the commit: seek there once the
                        // assignment is in place (as a retry that is due at once).
                        state.failure = Some(Failure::Retrying {
                            at: Instant::now(),
                            backoff: BACKOFF_MIN,
                        });
                        self.to_pause.push((s, p));
                    }
                    self.partitions.insert((s, p), state);
                }
                Err(error) => {
                    let fence = Arc::clone(self.fences.entry((s, p)).or_default());
                    let fresh = self.window(s);
                    self.partitions.insert(
                        (s, p),
                        PartitionState::new(
                            start,
                            &quiver_store::Tail {
                                durable: -1,
                                ends: Vec::new(),
                            },
                            ClaimBook::default(),
                            fresh,
                            fence,
                        ),
                    );
                    self.fail(s, p, error);
                }
            }
            list.push((elem.topic().to_string(), p));
        }
        self.pause_failed(consumer);
        self.assignment_changed("assign", &list);
    }

    /// Gives partitions up. Revoked ones are drained first (flushed, acknowledged, committed);
    /// lost ones (the group moved on without this member) are dropped without writing a thing.
    pub(crate) fn revoke(
        &mut self,
        consumer: &WorkerConsumer,
        tpl: &TopicPartitionList,
        lost: bool,
    ) {
        let keys: Vec<(usize, i32)> = tpl
            .elements()
            .iter()
            .filter_map(|e| Some((*self.by_topic.get(e.topic())?, e.partition())))
            .filter(|k| self.partitions.contains_key(k))
            .collect();
        if !lost {
            self.drain(consumer, &keys);
        }
        let mut list = Vec::new();
        for (s, p) in keys {
            if let Some(state) = self.partitions.remove(&(s, p)) {
                state.fence_off();
            }
            self.ownership[s].disown(p);
            list.push((self.sources[s].topic.clone(), p));
        }
        self.assignment_changed(if lost { "lost" } else { "revoke" }, &list);
    }

    fn assignment_changed(&self, kind: &'static str, list: &[(String, i32)]) {
        self.stats
            .assigned
            .store(self.partitions.len() as u64, Ordering::Relaxed);
        events::assignment(kind, list, self.partitions.len());
    }

    /// Flushes, acknowledges and commits `keys` (polled but unprocessed messages are left for
    /// the next owner), waiting at most [`DRAIN_TIMEOUT`].
    pub(crate) fn drain(&mut self, consumer: &WorkerConsumer, keys: &[(usize, i32)]) {
        for &(s, p) in keys {
            if let Some(state) = self.partitions.get_mut(&(s, p)) {
                state.incoming.clear();
            }
            if let Err(error) = self.cut(s, p, true) {
                self.fail(s, p, error);
            }
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while keys.iter().any(|k| {
            self.partitions
                .get(k)
                .is_some_and(|st| st.failure.is_none() && !st.drained())
        }) && Instant::now() < deadline
        {
            if let Some(done) = self.flusher.wait(Duration::from_millis(100)) {
                self.on_flushed(done);
            }
        }
        self.producer
            .flush(deadline.saturating_duration_since(Instant::now()));
        self.commit(consumer, keys);
    }

    /// Drains every partition and commits (shutdown).
    pub(crate) fn drain_all(&mut self, consumer: &WorkerConsumer) {
        let keys: Vec<(usize, i32)> = self.partitions.keys().copied().collect();
        self.drain(consumer, &keys);
    }
}
