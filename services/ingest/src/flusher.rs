//! The durable path, on its own thread: a partition's window of events becomes its raw segment,
//! one feature-log segment per view and a score-store segment (each fsynced and renamed into
//! place), then the Redis shards of the entities it touched — in that order, so that for every
//! offset the raw store is at least as far as the feature log, and the feature log as Redis.
//! The poll thread learns of each flush through [`Flusher::done`] and only then lets the
//! partition's commit move.
//!
//! A flush carries its partition's fence: when the partition is revoked, lost or reset, the
//! fence moves and the flusher drops what it has not written yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use chrono::NaiveDate;
use quiver_features::Shard;
use quiver_online::{Applied, Floor, OnlineStore};
use quiver_store::{SegmentId, SegmentStore, Table};
use tracing::warn;

use crate::failpoint::Failpoint;
use crate::{Error, Result, events};

/// Flushes queued at most before the poll thread waits (backpressure from a slow disk).
const QUEUE: usize = 64;

/// One view's shards of one partition to write.
#[derive(Debug)]
pub(crate) struct ViewShards {
    pub(crate) view: String,
    pub(crate) ttl: Duration,
    pub(crate) shards: Vec<(String, Arc<Shard>)>,
}

/// One partition's window, ready to be made durable.
#[derive(Debug)]
pub(crate) struct FlushJob {
    pub(crate) source: usize,
    pub(crate) source_name: String,
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) fence: Arc<AtomicU64>,
    /// First and last offset of the window (rejected events included).
    pub(crate) range: (i64, i64),
    pub(crate) date: NaiveDate,
    pub(crate) raw: RecordBatch,
    /// (view, rows) per view of the source.
    pub(crate) logs: Vec<(String, RecordBatch)>,
    /// The predictions, for a scored source.
    pub(crate) scores: Option<RecordBatch>,
    pub(crate) shards: Vec<ViewShards>,
    /// Per view (in `shards` order), how far Redis should hold the partition's shards before
    /// this flush: what the previous flush recorded, or what was read at the partition's
    /// start (`None`: nothing known).
    pub(crate) applied_before: Vec<Option<i64>>,
}

/// What the flusher is asked to do.
#[derive(Debug)]
pub(crate) enum Job {
    Flush(Box<FlushJob>),
    /// Delete claims whose offsets are committed and move the partition's claim floor.
    Release {
        source_name: String,
        partition: i32,
        committed_next: i64,
        floor: Floor,
        ranges: Vec<(i64, i64)>,
        ttl: std::time::Duration,
    },
}

/// What a flush wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FlushReport {
    pub(crate) raw_rows: usize,
    pub(crate) raw_bytes: u64,
    pub(crate) raw_segments: usize,
}

/// A flush's end.
#[derive(Debug)]
pub(crate) enum Outcome {
    Written(FlushReport),
    /// The partition moved on (revoked, lost or reset) before it was written.
    Fenced,
    Failed(Error),
}

/// A finished flush, as reported to the poll thread.
#[derive(Debug)]
pub(crate) struct Flushed {
    pub(crate) source: usize,
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) last: i64,
    pub(crate) outcome: Outcome,
    /// The shards as written: now the durable versions.
    pub(crate) shards: Vec<ViewShards>,
}

/// The durable path's thread.
#[derive(Debug)]
pub(crate) struct Flusher {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Flushed>,
    thread: Option<JoinHandle<()>>,
}

struct Stores {
    raw: SegmentStore,
    log: SegmentStore,
    scores: SegmentStore,
    online: OnlineStore,
    failpoint: Failpoint,
    /// The epoch of each partition whose last flush failed: its later flushes, queued before
    /// the poll thread learnt of the failure, are dropped as fenced (each expects what the
    /// failed one would have written, so writing them would only report Redis "behind").
    failed: HashMap<(usize, i32), u64>,
}

impl Flusher {
    /// Starts the thread over the stores under `store_dir`, writing Redis through `online`.
    pub(crate) fn start(store_dir: &std::path::Path, online: OnlineStore) -> Result<Self> {
        let mut stores = Stores {
            raw: SegmentStore::open(store_dir, Table::Raw)?,
            log: SegmentStore::open(store_dir, Table::FeatureLog)?,
            scores: SegmentStore::open(store_dir, Table::Scores)?,
            online,
            failpoint: Failpoint::from_env(),
            failed: HashMap::new(),
        };
        let (jobs, incoming) = sync_channel::<Job>(QUEUE);
        let (report, done) = sync_channel::<Flushed>(QUEUE * 4);
        let thread = std::thread::Builder::new()
            .name("quiver-flush".into())
            .spawn(move || {
                while let Ok(job) = incoming.recv() {
                    match job {
                        Job::Flush(job) => {
                            let flushed = stores.flush(*job);
                            if report.send(flushed).is_err() {
                                return;
                            }
                        }
                        Job::Release {
                            source_name,
                            partition,
                            committed_next,
                            floor,
                            ranges,
                            ttl,
                        } => {
                            if let Err(error) = stores.online.release_claims(
                                &source_name,
                                partition,
                                (committed_next, floor),
                                &ranges,
                                ttl,
                            ) {
                                warn!(source = %source_name, partition, %error, "cannot delete committed claims; they expire with score.claim_ttl_s");
                            }
                        }
                    }
                }
            })
            .map_err(|e| Error::Fatal(format!("cannot start the flush thread: {e}")))?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Queues a job (waits while the queue is full).
    pub(crate) fn submit(&self, job: Job) -> Result<()> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| Error::Fatal("the flush thread stopped".into()))
    }

    /// A finished flush, if any.
    pub(crate) fn done(&self) -> Option<Flushed> {
        self.done.try_recv().ok()
    }

    /// The next finished flush, waiting at most `timeout`.
    pub(crate) fn wait(&self, timeout: Duration) -> Option<Flushed> {
        self.done.recv_timeout(timeout).ok()
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Stores {
    fn flush(&mut self, job: FlushJob) -> Flushed {
        let key = (job.source, job.partition);
        let outcome = if self.failed.get(&key) == Some(&job.epoch) {
            Outcome::Fenced
        } else {
            match self.write(&job) {
                Ok(Some(report)) => Outcome::Written(report),
                Ok(None) => Outcome::Fenced,
                Err(e) => {
                    self.failed.insert(key, job.epoch);
                    Outcome::Failed(e)
                }
            }
        };
        Flushed {
            source: job.source,
            partition: job.partition,
            epoch: job.epoch,
            last: job.range.1,
            outcome,
            shards: job.shards,
        }
    }

    /// Writes a window; `None` when its partition was fenced on the way.
    fn write(&mut self, job: &FlushJob) -> Result<Option<FlushReport>> {
        let started = Instant::now();
        let fenced = || job.fence.load(Ordering::Acquire) != job.epoch;
        let id = SegmentId {
            partition: job.partition,
            first_offset: job.range.0,
            last_offset: job.range.1,
        };
        if fenced() {
            return Ok(None);
        }
        let written = self.raw.append(&job.source_name, job.date, id, &job.raw)?;
        let report = FlushReport {
            raw_rows: written.iter().map(|w| w.rows).sum(),
            raw_bytes: written.iter().map(|w| w.bytes).sum(),
            raw_segments: written.len(),
        };
        if !written.is_empty() {
            self.failpoint.hit(Failpoint::RAW_WRITTEN);
        }
        for (view, rows) in &job.logs {
            if fenced() {
                return Ok(None);
            }
            let written = self.log.append(view, job.date, id, rows)?;
            events::log_rows(view, written.iter().map(|w| w.rows).sum());
        }
        if let Some(scores) = &job.scores {
            if fenced() {
                return Ok(None);
            }
            self.scores.append(&job.source_name, job.date, id, scores)?;
        }
        for (view, expected) in job.shards.iter().zip(&job.applied_before) {
            if fenced() {
                return Ok(None);
            }
            let shards: Vec<(&str, &Shard)> = view
                .shards
                .iter()
                .map(|(k, s)| (k.as_str(), &**s))
                .collect();
            let writes = self
                .online
                .write_shards(&view.view, job.partition, view.ttl, &shards)?;
            events::shard_writes(&view.view, writes.written, writes.refused);
            // Only now, with every shard of the window written: Redis applies a connection's
            // writes in order, so whatever it keeps of this mark, it keeps those shards too.
            let applied =
                self.online
                    .advance_applied(&view.view, job.partition, job.range.1, *expected)?;
            if let Applied::Behind { held } = applied {
                return Err(Error::OnlineStateBehind {
                    view: view.view.clone(),
                    partition: job.partition,
                    expected: expected.unwrap_or(-1),
                    held: held.unwrap_or(-1),
                });
            }
        }
        events::flushed(&events::Flushed {
            source: &job.source_name,
            partition: job.partition,
            first: job.range.0,
            last: job.range.1,
            raw_rows: report.raw_rows,
            raw_bytes: report.raw_bytes,
            raw_segments: report.raw_segments,
            took: started.elapsed(),
        });
        Ok(Some(report))
    }
}
