//! A partition's failures and (re)starts: an error pauses it (what it had not flushed is
//! dropped), a retry after the backoff reads where it stands again — claims, raw segments,
//! Redis's applied watermarks — and seeks to its commit, or below it when Redis lost shards the
//! commit covers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_core::Retry;
use quiver_online::Floor;
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::Offset;
use tracing::warn;

use super::{Worker, resume};
use crate::claims::{ClaimBatch, ClaimBook};
use crate::consumer::WorkerConsumer;
use crate::flusher::Job;
use crate::partition::{BACKOFF_MAX, BACKOFF_MIN, Failure, PartitionState, resume_from};
use crate::{Error, Result, events};

impl Worker {
    /// Pauses a partition after an error: what it had not flushed is dropped, its state is
    /// read from Redis again, and it resumes from its last commit after a backoff (transient
    /// errors) or stays stopped (permanent ones).
    pub(crate) fn fail(&mut self, s: usize, p: i32, error: Error) {
        let fresh = self.window(s);
        let Some(state) = self.partitions.get_mut(&(s, p)) else {
            return;
        };
        state.fence_off();
        state.incoming.clear();
        state.window = fresh;
        state.flushing.clear();
        state.acks = Default::default();
        self.ownership[s].own(p);
        let retry = error.retry();
        let backoff = match &state.failure {
            Some(Failure::Retrying { backoff, .. }) => (*backoff * 2).min(BACKOFF_MAX),
            _ => BACKOFF_MIN,
        };
        state.failure = Some(match retry {
            Retry::Transient => Failure::Retrying {
                at: Instant::now() + backoff,
                backoff,
            },
            Retry::Permanent => Failure::Stopped(error.to_string()),
        });
        self.to_pause.push((s, p));
        events::partition_failed(&self.sources[s].schema.name, p, &error, retry, backoff);
    }

    /// Stops fetching the partitions that failed since the last call.
    pub(crate) fn pause_failed(&mut self, consumer: &WorkerConsumer) {
        for (s, p) in std::mem::take(&mut self.to_pause) {
            resume(consumer, &self.sources[s].topic, p, false);
        }
    }

    /// Restarts the partitions whose backoff elapsed: state from Redis, claims, the raw store's
    /// watermark, then consumption from the last commit.
    pub(crate) fn retry_due(&mut self, consumer: &WorkerConsumer) {
        let due: Vec<(usize, i32)> = self
            .partitions
            .iter()
            .filter(|(_, st)| {
                matches!(st.failure, Some(Failure::Retrying { at, .. }) if at <= Instant::now())
            })
            .map(|(k, _)| *k)
            .collect();
        for (s, p) in due {
            let Some(state) = self.partitions.get(&(s, p)) else {
                continue;
            };
            let from = state.committed_next.unwrap_or(state.start);
            let backoff = match state.failure {
                Some(Failure::Retrying { backoff, .. }) => backoff,
                _ => BACKOFF_MIN,
            };
            let committed = state.committed_next;
            match self.start_partition(s, p, from) {
                Ok(mut fresh) => {
                    fresh.committed_next = fresh.committed_next.max(committed);
                    let (topic, from) = (self.sources[s].topic.clone(), fresh.start);
                    if let Err(error) =
                        consumer.seek(&topic, p, Offset::Offset(from), Duration::from_secs(5))
                    {
                        warn!(topic, partition = p, %error, "cannot seek to the last commit; retrying");
                        if let Some(st) = self.partitions.get_mut(&(s, p)) {
                            st.failure = Some(Failure::Retrying {
                                at: Instant::now() + backoff,
                                backoff: (backoff * 2).min(BACKOFF_MAX),
                            });
                        }
                        continue;
                    }
                    if fresh.start < fresh.settled_below {
                        let views = self.sources[s].view_names();
                        events::online_state_behind(
                            &self.sources[s].schema.name,
                            p,
                            &views,
                            &fresh.applied,
                            fresh.start,
                            fresh.settled_below,
                        );
                    }
                    self.partitions.insert((s, p), fresh);
                    resume(consumer, &topic, p, true);
                    events::partition_resumed(&self.sources[s].schema.name, p, from, committed);
                }
                Err(error) => {
                    if let Some(st) = self.partitions.get_mut(&(s, p)) {
                        st.failure = Some(Failure::Retrying {
                            at: Instant::now(),
                            backoff,
                        });
                    }
                    self.fail(s, p, error);
                }
            }
        }
    }

    /// A fresh state for partition `p` of source `s`, consumed from `start`.
    pub(super) fn start_partition(
        &mut self,
        s: usize,
        p: i32,
        start: i64,
    ) -> Result<PartitionState> {
        let name = self.sources[s].schema.name.clone();
        let mut claims = ClaimBook::default();
        for range in self.online.claims(&name, p)? {
            let batch = ClaimBatch::decode(&range.bytes).map_err(|detail| Error::Claim {
                source_name: name.clone(),
                partition: p,
                detail,
            })?;
            claims.adopt(batch);
        }
        // Claims below the commit are done with (a crash came between commit and delete).
        let stale = claims.release(start);
        if self.sources[s].scored {
            // Everything below the commit is decided: delete its claims (a crash came between
            // commit and delete) and put the floor at the commit — down too, when the offsets
            // went back (a reset or a recreated topic), or the old floor would refuse them all.
            self.flusher.submit(Job::Release {
                source_name: name.clone(),
                partition: p,
                committed_next: start,
                floor: Floor::Set,
                ranges: stale,
                ttl: self.settings.claim_ttl,
            })?;
        }
        let views = self.sources[s].view_names();
        let mut applied = self.online.applied(&views, p)?;
        if self.wiped.remove(&(s, p)) {
            for held in applied.iter_mut().filter(|a| a.is_none()) {
                *held = Some(-1);
            }
        }
        let resume = resume_from(start, &applied);
        // Where the raw store stands (its checkpoint; segments are listed only when some end
        // at or after `resume`, i.e. when this is a replay).
        let raw_tail = self.raw.tail(&name, p, resume)?;
        let fence = Arc::clone(self.fences.entry((s, p)).or_default());
        self.ownership[s].own(p);
        let fresh = self.window(s);
        let mut state = PartitionState::new(resume, &raw_tail, claims, fresh, fence);
        state.settled_below = start;
        state.applied = applied;
        if resume < start {
            // Never commit below what the group has.
            state.committed_next = Some(start);
        }
        Ok(state)
    }
}
