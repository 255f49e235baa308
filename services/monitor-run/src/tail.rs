//! Tailing the stores: the segments of the score store (one stream per scored source) and of
//! the label source's raw store that the monitor has not read yet.
//!
//! The worker writes a segment whole or not at all (a rename into place), named by partition
//! and offset range, in the directory of the day it was written; so a tail lists only the days
//! its span reaches, remembers which segments it read, and reads each new one once. On its
//! first listing it skips the segments last modified before its span (every row in them was
//! written earlier).

use std::collections::HashSet;
use std::time::SystemTime;

use quiver_store::{SegmentFile, SegmentId, SegmentStore};

use crate::Result;

/// What a stream holds.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A scored source's predictions (score store), with its event id column.
    Scores { id: String },
    /// The label source's events (raw store): its event id and boolean label columns.
    Labels { id: String, label: String },
    /// A view's feature log (the stream is the view): only its event times, for freshness.
    Log,
}

impl Kind {
    /// The columns read of each segment.
    pub(crate) fn columns(&self) -> Vec<&str> {
        match self {
            Kind::Scores { id } => std::iter::once(id.as_str())
                .chain(crate::read::SCORE_COLUMNS)
                .collect(),
            Kind::Labels { id, label } => vec![id.as_str(), label.as_str()],
            // Read from each segment's metadata instead (`SegmentStore::newest_in`).
            Kind::Log => Vec::new(),
        }
    }
}

/// One stream tailed.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) store: SegmentStore,
    /// The stream's name (its source).
    pub(crate) name: String,
    pub(crate) kind: Kind,
    read: HashSet<SegmentId>,
    listed: bool,
}

impl Stream {
    pub(crate) fn new(store: SegmentStore, name: String, kind: Kind) -> Self {
        Self {
            store,
            name,
            kind,
            read: HashSet::new(),
            listed: false,
        }
    }

    /// The segments not read yet, oldest first per partition, written from `from_us` on (µs
    /// since the epoch; by day, and by modification time on the first listing). They count as
    /// read from now on: the caller reads each once.
    pub(crate) fn fresh(&mut self, from_us: i64) -> Result<Vec<SegmentFile>> {
        // From the day before: a segment is dated when its write begins, which may be the day
        // before it appears.
        let day = chrono::DateTime::from_timestamp_micros(from_us)
            .and_then(|t| t.date_naive().pred_opt())
            .unwrap_or_default();
        let first = !self.listed;
        let log = matches!(self.kind, Kind::Log);
        let day = if first && log {
            // Every day, once: a view's last segment may be older than the span.
            chrono::NaiveDate::MIN
        } else {
            day
        };
        let listed = self.store.segments_since(&self.name, day)?;
        // Forget what fell out of the listed days.
        let present: HashSet<SegmentId> = listed.iter().map(|s| s.id).collect();
        self.read.retain(|id| present.contains(id));
        self.listed = true;
        // A feature log is read for its latest event time only: at first its last segment of
        // each partition, however old (a view that stopped moving shows how long ago).
        let last_of_partition: HashSet<SegmentId> = if first && log {
            let mut last = std::collections::HashMap::new();
            for s in &listed {
                last.insert(s.id.partition, s.id);
            }
            last.into_values().collect()
        } else {
            HashSet::new()
        };
        let mut out = Vec::new();
        for segment in listed {
            if !self.read.insert(segment.id) {
                continue;
            }
            let skip = if log {
                first && !last_of_partition.contains(&segment.id)
            } else {
                first && modified_before(&segment, from_us)
            };
            if !skip {
                out.push(segment);
            }
        }
        Ok(out)
    }

    /// `scores/<source>` or `raw/<source>`.
    pub(crate) fn describe(&self) -> String {
        format!("{}/{}", self.store.table().dir_name(), self.name)
    }

    /// Un-reads a segment (its read failed: it is tried again at the next poll).
    pub(crate) fn retry(&mut self, segment: &SegmentFile) {
        self.read.remove(&segment.id);
    }
}

/// Whether `segment` was last written before `from_us` (unknown counts as not before).
fn modified_before(segment: &SegmentFile, from_us: i64) -> bool {
    std::fs::metadata(&segment.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_micros()).ok())
        .is_some_and(|us| us < from_us)
}
