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
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

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
    /// Parquet could not encode a batch.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
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
/// Extension of offline-store segments.
pub const PARQUET_EXT: &str = "parquet";

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
    /// The segment's file name in the raw store.
    pub fn file_name(&self) -> String {
        self.file_name_with(SEGMENT_EXT)
    }

    /// The segment's file name with extension `ext`.
    pub fn file_name_with(&self, ext: &str) -> String {
        format!(
            "part-{:05}-{:020}-{:020}.{ext}",
            self.partition, self.first_offset, self.last_offset
        )
    }

    /// Parses a raw-store file name produced by [`SegmentId::file_name`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::parse_with(name, SEGMENT_EXT)
    }

    /// Parses a file name with extension `ext`.
    pub fn parse_with(name: &str, ext: &str) -> Option<Self> {
        let stem = name
            .strip_prefix("part-")?
            .strip_suffix(ext)?
            .strip_suffix('.')?;
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

impl SegmentFile {
    /// The date directory it sits in (`date=YYYY-MM-DD`).
    pub fn date(&self) -> Option<NaiveDate> {
        let dir = self.path.parent()?.file_name()?.to_str()?;
        NaiveDate::parse_from_str(dir.strip_prefix("date=")?, "%Y-%m-%d").ok()
    }
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

/// A directory of offset-named segments, one sub-directory per stream (source or view).
#[derive(Debug, Clone)]
struct SegmentDir {
    root: PathBuf,
    ext: &'static str,
}

impl SegmentDir {
    fn open(root: PathBuf, ext: &'static str) -> Result<Self> {
        std::fs::create_dir_all(&root).map_err(io("create", &root))?;
        Ok(Self { root, ext })
    }

    fn stream_dir(&self, stream: &str) -> PathBuf {
        self.root.join(stream)
    }

    fn segments(&self, stream: &str) -> Result<Vec<SegmentFile>> {
        let dir = self.stream_dir(stream);
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
                if name.starts_with('.') && name.contains(".tmp-") {
                    // A write that never reached its rename. Another process (or another
                    // member in this one) may be writing it right now, so only a file whose
                    // writer is gone is removed.
                    if writer_gone(name) {
                        let _ = std::fs::remove_file(&path);
                    }
                    continue;
                }
                if let Some(id) = SegmentId::parse_with(name, self.ext) {
                    out.push(SegmentFile { id, path });
                }
            }
        }
        out.sort_by_key(|a| a.id);
        Ok(out)
    }

    fn durable_offsets(&self, stream: &str) -> Result<BTreeMap<i32, i64>> {
        let mut out = BTreeMap::new();
        for segment in self.segments(stream)? {
            let last = out
                .entry(segment.id.partition)
                .or_insert(segment.id.last_offset);
            *last = (*last).max(segment.id.last_offset);
        }
        Ok(out)
    }

    fn retire(&self, stream: &str) -> Result<PathBuf> {
        let from = self.stream_dir(stream);
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let to = self.root.join(format!("{stream}.stale-{stamp}"));
        std::fs::rename(&from, &to).map_err(io("rename", &from))?;
        sync_dir(&self.root)?;
        Ok(to)
    }

    /// Writes a segment through `encode` durably and atomically. If it exists, it is left as it
    /// is (a replay), or atomically replaced when `replace` is set (a backfill).
    fn write(
        &self,
        stream: &str,
        date: NaiveDate,
        id: SegmentId,
        replace: bool,
        encode: impl FnOnce(File) -> Result<File>,
    ) -> Result<WrittenSegment> {
        let dir = self
            .stream_dir(stream)
            .join(format!("date={}", date.format("%Y-%m-%d")));
        let name = id.file_name_with(self.ext);
        let path = dir.join(&name);
        if let Ok(meta) = std::fs::metadata(&path)
            && !replace
        {
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
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp).map_err(io("create", &tmp))?;
        let file = encode(file)?;
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

/// The raw store rooted at `<dir>/raw`: Arrow IPC segments per source.
#[derive(Debug, Clone)]
pub struct RawStore {
    dir: SegmentDir,
}

impl RawStore {
    /// Opens (creating if needed) the raw store under the store dir.
    pub fn open(store_dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: SegmentDir::open(store_dir.join("raw"), SEGMENT_EXT)?,
        })
    }

    /// Every segment of a source, sorted by (partition, first offset). Temporary files left by a
    /// writer that has exited are removed on the way.
    pub fn segments(&self, source: &str) -> Result<Vec<SegmentFile>> {
        self.dir.segments(source)
    }

    /// The last durable offset of each partition of a source.
    pub fn durable_offsets(&self, source: &str) -> Result<BTreeMap<i32, i64>> {
        self.dir.durable_offsets(source)
    }

    /// Moves a source's segments aside to `raw/<source>.stale-<UTC time>` (they belong to an
    /// earlier incarnation of its topic) and returns the new location.
    pub fn retire_source(&self, source: &str) -> Result<PathBuf> {
        self.dir.retire(source)
    }

    /// Writes one segment durably and atomically; a no-op if it already exists.
    pub fn write_segment(
        &self,
        source: &str,
        date: NaiveDate,
        id: SegmentId,
        batch: &RecordBatch,
    ) -> Result<WrittenSegment> {
        self.dir.write(source, date, id, false, |file| {
            let mut writer = FileWriter::try_new(file, &batch.schema())?;
            writer.write(batch)?;
            writer.finish()?;
            Ok(writer.into_inner()?)
        })
    }
}

/// The offline store rooted at `<dir>/offline`: each view's feature log as Parquet.
#[derive(Debug, Clone)]
pub struct OfflineStore {
    dir: SegmentDir,
}

impl OfflineStore {
    /// Opens (creating if needed) the offline store under the store dir.
    pub fn open(store_dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: SegmentDir::open(store_dir.join("offline"), PARQUET_EXT)?,
        })
    }

    /// Every feature-log segment of a view.
    pub fn segments(&self, view: &str) -> Result<Vec<SegmentFile>> {
        self.dir.segments(view)
    }

    /// The last source offset of each partition already logged for a view.
    pub fn durable_offsets(&self, view: &str) -> Result<BTreeMap<i32, i64>> {
        self.dir.durable_offsets(view)
    }

    /// Moves a view's log aside (its source topic was re-created).
    pub fn retire_view(&self, view: &str) -> Result<PathBuf> {
        self.dir.retire(view)
    }

    /// Writes one feature-log segment (zstd Parquet) durably and atomically; a no-op if it
    /// already exists.
    pub fn write_segment(
        &self,
        view: &str,
        date: NaiveDate,
        id: SegmentId,
        batch: &RecordBatch,
    ) -> Result<WrittenSegment> {
        self.write_parquet(view, date, id, false, batch)
    }

    /// Writes one feature-log segment, atomically replacing a segment of the same name (the
    /// backfill rewrites the log segment by segment).
    pub fn replace_segment(
        &self,
        view: &str,
        date: NaiveDate,
        id: SegmentId,
        batch: &RecordBatch,
    ) -> Result<WrittenSegment> {
        self.write_parquet(view, date, id, true, batch)
    }

    /// Removes a feature-log segment (one a backfill's rewrite superseded).
    pub fn remove_segment(&self, segment: &SegmentFile) -> Result<()> {
        match std::fs::remove_file(&segment.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &segment.path)(e)),
        }
        if let Some(dir) = segment.path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    fn write_parquet(
        &self,
        view: &str,
        date: NaiveDate,
        id: SegmentId,
        replace: bool,
        batch: &RecordBatch,
    ) -> Result<WrittenSegment> {
        write_parquet(&self.dir, view, date, id, replace, batch)
    }
}

fn write_parquet(
    dir: &SegmentDir,
    stream: &str,
    date: NaiveDate,
    id: SegmentId,
    replace: bool,
    batch: &RecordBatch,
) -> Result<WrittenSegment> {
    dir.write(stream, date, id, replace, |file| {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
            .build();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
        writer.write(batch)?;
        Ok(writer.into_inner()?)
    })
}

/// The score store rooted at `<dir>/scores`: the scorer's predictions per source, Parquet,
/// named by the source partition and offset range they cover.
#[derive(Debug, Clone)]
pub struct ScoreStore {
    dir: SegmentDir,
}

impl ScoreStore {
    /// Opens (creating if needed) the score store under the store dir.
    pub fn open(store_dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: SegmentDir::open(store_dir.join("scores"), PARQUET_EXT)?,
        })
    }

    /// Every segment of a source's predictions.
    pub fn segments(&self, source: &str) -> Result<Vec<SegmentFile>> {
        self.dir.segments(source)
    }

    /// Writes one segment durably and atomically; a no-op if it already exists (a replay).
    pub fn write_segment(
        &self,
        source: &str,
        date: NaiveDate,
        id: SegmentId,
        batch: &RecordBatch,
    ) -> Result<WrittenSegment> {
        write_parquet(&self.dir, source, date, id, false, batch)
    }
}

/// Whether the process that wrote temporary file `name` (`.<segment>.tmp-<pid>`) has exited.
/// Unknown (no `/proc`, or a name without a pid) counts as alive: the file is then left alone.
fn writer_gone(name: &str) -> bool {
    let Some(pid) = name
        .rsplit_once(".tmp-")
        .and_then(|(_, pid)| pid.parse::<u32>().ok())
    else {
        return false;
    };
    pid != std::process::id()
        && Path::new("/proc/self").exists()
        && !Path::new("/proc").join(pid.to_string()).exists()
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
    fn temporary_files_of_live_or_unknown_writers_are_kept() {
        // This process is alive: another member in it may be writing the file right now.
        let mine = format!(
            ".part-00001-00000000000000000000-00000000000000000009.arrow.tmp-{}",
            std::process::id()
        );
        assert!(!writer_gone(&mine));
        assert!(!writer_gone(".part-1-2-3.arrow.tmp-notapid"));
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
