//! Bounded growth of a stream: dropping the date directories retention no longer keeps, and
//! merging runs of small segments into larger ones. [`plan`] decides (pure); [`SegmentStore::compact`]
//! carries a plan out under the stream's lock.
//!
//! Merging is atomic for readers: the merged segment is renamed into place before the segments
//! it replaces are removed, and a listing hides a segment another one covers, so a reader sees
//! each offset once whether it lists before, during or after (and a crash in between leaves
//! only covered segments, removed by the next compaction). Only date directories at least two
//! days old are merged, so a reader tailing today's and yesterday's segments (the monitor) never
//! sees a merged segment of offsets it already read.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use chrono::{Days, NaiveDate, NaiveTime};

use crate::segment::{SegmentFile, SegmentId};
use crate::store::SegmentStore;
use crate::{Result, Table};

/// File metadata (Arrow IPC footer, Parquet key-value; not the schema's, which readers merge)
/// of a merged segment: the last offsets of the segments it replaced, but its
/// own, comma-separated.
pub const SEGMENT_ENDS_KEY: &str = "quiver.segment_ends";

/// What to compact, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Keep segments written within this long (µs); older date directories are removed.
    /// `None`: keep everything.
    pub retention_us: Option<i64>,
    /// Merge contiguous segments while the merged one stays under this many bytes.
    pub target_bytes: u64,
}

/// A segment as listed, with its size and date directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The segment.
    pub file: SegmentFile,
    /// Its date directory.
    pub date: NaiveDate,
    /// Bytes on disk.
    pub bytes: u64,
}

/// What a compaction does to one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Segments retention no longer keeps (with their sizes).
    pub drop: Vec<Listed>,
    /// Runs of contiguous segments (one partition, one date directory) to merge, each into one.
    pub merge: Vec<Vec<SegmentFile>>,
}

/// What [`SegmentStore::compact`] did to one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Segments removed by retention.
    pub dropped: usize,
    /// Their bytes.
    pub dropped_bytes: u64,
    /// Segments merged away.
    pub merged_from: usize,
    /// Segments they became.
    pub merged_into: usize,
    /// Segments a crashed compaction left covered by a merged one, removed.
    pub leftovers: usize,
}

/// The plan for `listed` (one stream's segments) at `now`: drop every segment of a date
/// directory whose whole day lies more than the retention before `now`; merge, in date
/// directories at least two days old, each run of offset-contiguous segments of one partition
/// while the merged size stays within the target.
pub fn plan(listed: &[Listed], policy: &Policy, now: chrono::DateTime<chrono::Utc>) -> Plan {
    let mut out = Plan::default();
    let today = now.date_naive();
    let keep_after = policy
        .retention_us
        .map(|r| now - chrono::Duration::microseconds(r));
    let merge_before = today.checked_sub_days(Days::new(1)).unwrap_or(today);
    let mut runs: BTreeMap<(i32, NaiveDate), Vec<&Listed>> = BTreeMap::new();
    for l in listed {
        let day_end = l
            .date
            .checked_add_days(Days::new(1))
            .map(|d| d.and_time(NaiveTime::MIN).and_utc());
        if let (Some(keep_after), Some(day_end)) = (keep_after, day_end)
            && day_end <= keep_after
        {
            out.drop.push(l.clone());
        } else if l.date < merge_before {
            runs.entry((l.file.id.partition, l.date))
                .or_default()
                .push(l);
        }
    }
    for (_, mut segments) in runs {
        segments.sort_by_key(|l| l.file.id);
        let mut run: Vec<&Listed> = Vec::new();
        let mut bytes = 0u64;
        for l in segments {
            let contiguous = run.last().is_some_and(|p| {
                p.file.id.last_offset.checked_add(1) == Some(l.file.id.first_offset)
            });
            if !contiguous || bytes + l.bytes > policy.target_bytes {
                close(&mut run, &mut out.merge);
                bytes = 0;
            }
            bytes += l.bytes;
            run.push(l);
        }
        close(&mut run, &mut out.merge);
    }
    out
}

fn close(run: &mut Vec<&Listed>, merges: &mut Vec<Vec<SegmentFile>>) {
    if run.len() > 1 {
        merges.push(run.iter().map(|l| l.file.clone()).collect());
    }
    run.clear();
}

impl Plan {
    /// What carrying the plan out would do (a merge counted as one segment, as it is unless a
    /// definition change splits it).
    pub fn summary(&self) -> Compacted {
        Compacted {
            dropped: self.drop.len(),
            dropped_bytes: self.drop.iter().map(|l| l.bytes).sum(),
            merged_from: self.merge.iter().map(Vec::len).sum(),
            merged_into: self.merge.len(),
            leftovers: 0,
        }
    }
}

impl SegmentStore {
    /// The plan [`SegmentStore::compact`] would carry out now.
    pub fn planned(
        &self,
        stream: &str,
        policy: &Policy,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Plan> {
        let (listed, _) = self.listed(stream)?;
        Ok(plan(&listed, policy, now))
    }

    /// Compacts one stream by `policy` at `now`: removes what retention no longer keeps
    /// (recording first, per partition, the last offset removed and — given the table's
    /// `event_time` column — the newest event time removed) and merges small segments. Holds
    /// the stream's maintenance lock throughout (one compaction or backfill at a time) and its
    /// write lock while removing and for each merge, so a worker's appends wait at most one
    /// merge.
    pub fn compact(
        &self,
        stream: &str,
        policy: &Policy,
        now: chrono::DateTime<chrono::Utc>,
        event_time: Option<&str>,
    ) -> Result<Compacted> {
        let mut done = Compacted::default();
        if !self.stream_dir(stream).exists() {
            return Ok(done);
        }
        let _maintenance = self.maintenance_lock(stream)?;
        let plan = {
            let _lock = self.lock(stream)?;
            // Pending lines resolved and saved: a merge must not remove a segment only a
            // pending line accounts for.
            for partition in self.checkpointed(stream)? {
                self.checkpoint_locked(stream, partition)?;
            }
            let (listed, covered) = self.listed(stream)?;
            for leftover in covered {
                self.remove(&leftover)?;
                done.leftovers += 1;
            }
            plan(&listed, policy, now)
        };
        // Read without the write lock: only a maintenance-lock holder touches old days.
        let removed = self.removed_per_partition(&plan.drop, event_time)?;
        {
            let _lock = self.lock(stream)?;
            self.drop_expired(stream, &plan.drop, &removed, &mut done)?;
        }
        for run in &plan.merge {
            let _lock = self.lock(stream)?;
            done.merged_into += self.merge(stream, run)?;
            done.merged_from += run.len();
        }
        self.remove_empty_dates(stream)?;
        Ok(done)
    }

    /// Every segment with its date and size, and the segments another one covers.
    fn listed(&self, stream: &str) -> Result<(Vec<Listed>, Vec<SegmentFile>)> {
        let (segments, covered) = self.list_all(stream)?;
        let mut out = Vec::with_capacity(segments.len());
        for file in segments {
            let Some(date) = file.date() else { continue };
            let bytes = std::fs::metadata(&file.path)
                .map_err(crate::io("stat", &file.path))?
                .len();
            out.push(Listed { file, date, bytes });
        }
        Ok((out, covered))
    }

    /// Per partition of the segments to remove: the last offset removed, and the newest event
    /// time among the rows removed (`i64::MIN` when none had rows; `None` when unknown).
    fn removed_per_partition(
        &self,
        drop: &[Listed],
        event_time: Option<&str>,
    ) -> Result<BTreeMap<i32, (i64, Option<i64>)>> {
        let mut by_partition: BTreeMap<i32, (i64, Option<i64>)> = BTreeMap::new();
        for Listed { file: segment, .. } in drop {
            let time = match event_time {
                Some(column) => match self.newest_in(segment, column)? {
                    (_, 0) => Some(i64::MIN),
                    (newest, _) => newest,
                },
                None => None,
            };
            let entry = by_partition
                .entry(segment.id.partition)
                .or_insert((segment.id.last_offset, time));
            entry.0 = entry.0.max(segment.id.last_offset);
            entry.1 = match (entry.1, time) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        Ok(by_partition)
    }

    /// Removes the segments retention no longer keeps (the caller holds the write lock).
    fn drop_expired(
        &self,
        stream: &str,
        drop: &[Listed],
        by_partition: &BTreeMap<i32, (i64, Option<i64>)>,
        done: &mut Compacted,
    ) -> Result<()> {
        // The checkpoints first: once they say the offsets are gone, a replay of them writes
        // nothing, whether or not the files are removed yet.
        for (&partition, &(through, time)) in by_partition {
            let mut cp = self.checkpoint_locked(stream, partition)?;
            cp.drop_through(through, time);
            self.save_dropped_copy(stream, partition, &cp)?;
            self.save_checkpoint(stream, partition, &cp, true)?;
        }
        for segment in drop {
            self.remove(&segment.file)?;
            done.dropped_bytes += segment.bytes;
            done.dropped += 1;
        }
        Ok(())
    }

    /// Merges one run into as few segments as its schemas allow (a definition change between
    /// two segments keeps them apart); returns how many it became.
    fn merge(&self, stream: &str, run: &[SegmentFile]) -> Result<usize> {
        // Per group: its files, their rows, and the ends of the segments they hold (each
        // file's own and those merged into it before).
        let mut groups: Vec<(Vec<&SegmentFile>, Vec<RecordBatch>, Vec<i64>)> = Vec::new();
        for segment in run {
            let (batch, inner) = self.read_whole(segment)?;
            let ends = inner.into_iter().chain([segment.id.last_offset]);
            match groups.last_mut() {
                Some((files, batches, held))
                    if batches
                        .first()
                        .is_some_and(|b| b.schema().fields() == batch.schema().fields()) =>
                {
                    files.push(segment);
                    batches.push(batch);
                    held.extend(ends);
                }
                _ => groups.push((vec![segment], vec![batch], ends.collect())),
            }
        }
        let mut made = 0;
        for (files, batches, mut ends) in groups {
            made += 1;
            let (Some(first), Some(last)) = (files.first(), files.last()) else {
                continue;
            };
            let (Some(date), Some(schema)) =
                (first.date(), batches.first().map(RecordBatch::schema))
            else {
                continue;
            };
            if files.len() < 2 {
                continue;
            }
            let id = SegmentId {
                partition: first.id.partition,
                first_offset: first.id.first_offset,
                last_offset: last.id.last_offset,
            };
            // The ends of the merged segments stay known, but the merged one's own: a replay
            // seals the partition there as it did between them (the versions other
            // partitions' logged clocks name).
            ends.pop();
            let text = ends
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let batch = arrow::compute::concat_batches(&schema, &batches)?;
            // The merged segment is in place before the ones it covers go.
            // Within what the partition holds: its checkpoint stays as it is.
            self.encode_into_place(stream, date, id, &batch, Some((SEGMENT_ENDS_KEY, text)))?;
            for f in &files {
                self.remove(f)?;
            }
        }
        Ok(made)
    }

    /// The last offsets of the segments a compaction merged into `segment`, but its own
    /// (empty for a segment never merged).
    pub fn inner_ends(&self, segment: &SegmentFile) -> Result<Vec<i64>> {
        let path = &segment.path;
        let file = std::fs::File::open(path).map_err(crate::io("open", path))?;
        Ok(match self.table() {
            Table::Raw => ipc_ends(&arrow::ipc::reader::FileReader::try_new(file, None)?),
            Table::FeatureLog | Table::Scores | Table::Monitor => parquet_ends(
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
                    .metadata(),
            ),
        })
    }

    /// Every row of a segment as one batch (with the segment's schema even when it has none),
    /// and the ends of the segments merged into it.
    fn read_whole(&self, segment: &SegmentFile) -> Result<(RecordBatch, Vec<i64>)> {
        let path = &segment.path;
        let file = std::fs::File::open(path).map_err(crate::io("open", path))?;
        let (schema, batches, ends) = match self.table() {
            Table::Raw => {
                let reader = arrow::ipc::reader::FileReader::try_new(file, None)?;
                let (schema, ends) = (reader.schema(), ipc_ends(&reader));
                let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
                (schema, batches, ends)
            }
            Table::FeatureLog | Table::Scores | Table::Monitor => {
                let builder =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?;
                let schema = std::sync::Arc::clone(builder.schema());
                let ends = parquet_ends(builder.metadata());
                let batches = builder
                    .build()?
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                (schema, batches, ends)
            }
        };
        Ok((arrow::compute::concat_batches(&schema, &batches)?, ends))
    }

    /// Removes the date directories compaction emptied.
    fn remove_empty_dates(&self, stream: &str) -> Result<()> {
        let dir = self.stream_dir(stream);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries {
            let path = entry.map_err(crate::io("list", &dir))?.path();
            if crate::segment::date_of(&path).is_some()
                && std::fs::read_dir(&path).is_ok_and(|mut d| d.next().is_none())
            {
                // Another writer may have just created a file in it; then it stays.
                let _ = std::fs::remove_dir(&path);
            }
        }
        Ok(())
    }
}

/// The merged segments' ends an Arrow IPC segment's footer holds.
fn ipc_ends<R: std::io::Read + std::io::Seek>(
    reader: &arrow::ipc::reader::FileReader<R>,
) -> Vec<i64> {
    parse_ends(
        reader
            .custom_metadata()
            .get(SEGMENT_ENDS_KEY)
            .map(String::as_str),
    )
}

/// The merged segments' ends a Parquet segment's key-value metadata holds.
fn parquet_ends(metadata: &parquet::file::metadata::ParquetMetaData) -> Vec<i64> {
    parse_ends(
        metadata
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|kv| kv.key == SEGMENT_ENDS_KEY))
            .and_then(|kv| kv.value.as_deref()),
    )
}

fn parse_ends(text: Option<&str>) -> Vec<i64> {
    text.map(|text| text.split(',').filter_map(|e| e.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(partition: i32, first: i64, last: i64, date: &str, bytes: u64) -> Listed {
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap_or_default();
        let id = SegmentId {
            partition,
            first_offset: first,
            last_offset: last,
        };
        Listed {
            file: SegmentFile {
                id,
                path: format!("date={date}/{}", id.file_name("arrow")).into(),
            },
            date,
            bytes,
        }
    }

    fn at(text: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.to_utc())
            .unwrap_or_default()
    }

    const DAY: i64 = 86_400_000_000;

    #[test]
    fn retention_drops_only_days_wholly_older_than_it() {
        let listed = [
            seg(0, 0, 9, "2026-11-20", 10),
            seg(0, 10, 19, "2026-11-21", 10),
            seg(0, 20, 29, "2026-11-28", 10),
        ];
        let policy = Policy {
            retention_us: Some(7 * DAY),
            target_bytes: 0,
        };
        // 2026-11-28T12:00 − 7 days = 2026-11-21T12:00: the 20th ended before it, the 21st not.
        let plan = plan(&listed, &policy, at("2026-11-28T12:00:00Z"));
        assert_eq!(plan.drop, vec![listed[0].clone()]);
        let keep_all = Policy {
            retention_us: None,
            ..policy
        };
        assert!(
            super::plan(&listed, &keep_all, at("2030-01-01T00:00:00Z"))
                .drop
                .is_empty()
        );
    }

    #[test]
    fn merges_contiguous_runs_of_one_partition_and_day_up_to_the_target() {
        let listed = [
            seg(0, 0, 9, "2026-11-20", 40),
            seg(0, 10, 19, "2026-11-20", 40),
            seg(0, 20, 29, "2026-11-20", 40),
            seg(0, 30, 39, "2026-11-20", 40),
            // a gap: a new run
            seg(0, 45, 49, "2026-11-20", 10),
            seg(0, 50, 59, "2026-11-20", 10),
            // another day, another partition, too recent, alone
            seg(0, 60, 69, "2026-11-21", 10),
            seg(1, 0, 9, "2026-11-20", 10),
            seg(1, 10, 19, "2026-11-20", 10),
            seg(0, 70, 79, "2026-11-27", 10),
            seg(0, 80, 89, "2026-11-27", 10),
        ];
        let policy = Policy {
            retention_us: None,
            target_bytes: 100,
        };
        let plan = plan(&listed, &policy, at("2026-11-28T00:30:00Z"));
        let files = |i: &[usize]| {
            i.iter()
                .map(|&i| listed[i].file.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            plan.merge,
            vec![
                files(&[0, 1]),
                files(&[2, 3]),
                files(&[4, 5]),
                files(&[7, 8])
            ]
        );
        assert!(plan.drop.is_empty());
    }
}
