//! Quiver's file stores. This crate owns the on-disk layout; it knows nothing of Kafka.
//!
//! The **raw store** keeps every valid event as Arrow IPC files:
//! `<dir>/raw/<source>/date=YYYY-MM-DD/part-PPPPP-FFFFFFFFFFFFFFFFFFFF-LLLLLLLLLLLLLLLLLLLL.arrow`,
//! one file per flushed segment of one partition, named by the partition and the first and last
//! Kafka offsets it covers (rejected events included, so the range is contiguous). `date` is the
//! UTC date the segment was written: the raw store is an arrival-ordered log, replayed in
//! (partition, offset) order. A segment is written to a hidden temporary file, fsynced, renamed
//! into place and its directory fsynced, so a segment either exists whole or not at all; a
//! segment whose name already exists is not rewritten. On assignment the ingest service asks
//! [`RawStore::durable_offsets`] for the last offset each partition already has on disk and skips
//! what it sees again, which makes replays after a crash idempotent.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::ipc::writer::FileWriter;
use chrono::NaiveDate;

/// Result alias used across `quiver-store`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the file stores.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Arrow could not encode a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Extension of raw segments.
pub const SEGMENT_EXT: &str = "arrow";

/// Identity of a raw segment: partition and inclusive offset range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId {
    /// Kafka partition.
    pub partition: i32,
    /// First offset covered.
    pub first_offset: i64,
    /// Last offset covered (inclusive).
    pub last_offset: i64,
}

impl SegmentId {
    /// The segment's file name.
    pub fn file_name(&self) -> String {
        format!(
            "part-{:05}-{:020}-{:020}.{SEGMENT_EXT}",
            self.partition, self.first_offset, self.last_offset
        )
    }

    /// Parses a file name produced by [`SegmentId::file_name`].
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name
            .strip_prefix("part-")?
            .strip_suffix(&format!(".{SEGMENT_EXT}"))?;
        let mut parts = stem.split('-');
        let partition = parts.next()?.parse().ok()?;
        let first_offset = parts.next()?.parse().ok()?;
        let last_offset = parts.next()?.parse().ok()?;
        if parts.next().is_some() || last_offset < first_offset {
            return None;
        }
        Some(Self {
            partition,
            first_offset,
            last_offset,
        })
    }
}

/// A segment on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its identity.
    pub id: SegmentId,
    /// Its path.
    pub path: PathBuf,
}

/// What a segment write did.
#[derive(Debug, Clone)]
pub struct WrittenSegment {
    /// Path of the segment.
    pub path: PathBuf,
    /// Bytes on disk.
    pub bytes: u64,
    /// False when the segment already existed (a replay) and was left as it was.
    pub created: bool,
}

/// The raw store rooted at `<dir>/raw`.
#[derive(Debug, Clone)]
pub struct RawStore {
    root: PathBuf,
}

impl RawStore {
    /// Opens (creating if needed) the raw store under the store dir.
    pub fn open(store_dir: &Path) -> Result<Self> {
        let root = store_dir.join("raw");
        std::fs::create_dir_all(&root).map_err(io("create", &root))?;
        Ok(Self { root })
    }

    /// The root directory (`<dir>/raw`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of one source.
    pub fn source_dir(&self, source: &str) -> PathBuf {
        self.root.join(source)
    }

    /// Every segment of a source, sorted by (partition, first offset). Stray temporary files of
    /// an interrupted write are removed on the way.
    pub fn segments(&self, source: &str) -> Result<Vec<SegmentFile>> {
        let dir = self.source_dir(source);
        let mut out = Vec::new();
        let dates = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("list", &dir)(e)),
        };
        for date in dates {
            let date = date.map_err(io("list", &dir))?.path();
            if !date.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&date).map_err(io("list", &date))? {
                let path = entry.map_err(io("list", &date))?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if name.starts_with('.') && name.contains(".tmp") {
                    // A write that never reached its rename: never visible, safe to drop.
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                if let Some(id) = SegmentId::parse(name) {
                    out.push(SegmentFile { id, path });
                }
            }
        }
        out.sort_by_key(|a| a.id);
        Ok(out)
    }

    /// The last durable offset of each partition of a source.
    pub fn durable_offsets(&self, source: &str) -> Result<BTreeMap<i32, i64>> {
        let mut out = BTreeMap::new();
        for segment in self.segments(source)? {
            let last = out
                .entry(segment.id.partition)
                .or_insert(segment.id.last_offset);
            *last = (*last).max(segment.id.last_offset);
        }
        Ok(out)
    }

    /// Moves a source's segments aside to `raw/<source>.stale-<UTC time>` (they belong to an
    /// earlier incarnation of its topic) and returns the new location.
    pub fn retire_source(&self, source: &str) -> Result<PathBuf> {
        let from = self.source_dir(source);
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let to = self.root.join(format!("{source}.stale-{stamp}"));
        std::fs::rename(&from, &to).map_err(io("rename", &from))?;
        sync_dir(&self.root)?;
        Ok(to)
    }

    /// Writes one segment durably and atomically; a no-op if it already exists.
    pub fn write_segment(
        &self,
        source: &str,
        date: NaiveDate,
        id: SegmentId,
        batch: &RecordBatch,
    ) -> Result<WrittenSegment> {
        let dir = self
            .source_dir(source)
            .join(format!("date={}", date.format("%Y-%m-%d")));
        let path = dir.join(id.file_name());
        if let Ok(meta) = std::fs::metadata(&path) {
            return Ok(WrittenSegment {
                path,
                bytes: meta.len(),
                created: false,
            });
        }
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let tmp = dir.join(format!(".{}.tmp-{}", id.file_name(), std::process::id()));
        let file = File::create(&tmp).map_err(io("create", &tmp))?;
        let mut writer = FileWriter::try_new(file, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
        let file = writer.into_inner()?;
        file.sync_all().map_err(io("fsync", &tmp))?;
        let bytes = file.metadata().map_err(io("stat", &tmp))?.len();
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
        sync_dir(&dir)?;
        Ok(WrittenSegment {
            path,
            bytes,
            created: true,
        })
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_by_offset() {
        let a = SegmentId {
            partition: 2,
            first_offset: 9,
            last_offset: 120,
        };
        let b = SegmentId {
            partition: 2,
            first_offset: 121,
            last_offset: 5000,
        };
        assert_eq!(
            a.file_name(),
            "part-00002-00000000000000000009-00000000000000000120.arrow"
        );
        assert_eq!(SegmentId::parse(&a.file_name()), Some(a));
        assert!(a.file_name() < b.file_name());
        assert!(a < b);
    }

    #[test]
    fn foreign_names_are_ignored() {
        for name in [
            "part-1-2.arrow",
            "x.arrow",
            "part-00001-5-4.arrow",
            "part-1-2-3-4.arrow",
            ".part-1-2-3.arrow.tmp-9",
        ] {
            assert_eq!(SegmentId::parse(name), None, "{name}");
        }
    }
}
