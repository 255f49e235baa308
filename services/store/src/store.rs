//! One table of offset-named segments: listing, durable offsets, and exclusive atomic writes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::DataType;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use quiver_core::schema::OFFSET_COLUMN;

use crate::checkpoint::{self, Checkpoint, Dropped};
use crate::segment::{SegmentFile, SegmentId, date_of};
use crate::{Error, Result, Table, io};

/// Where a partition of a stream stands (see [`SegmentStore::tail`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The last offset the stream holds (or held, before retention), `-1` for none.
    pub durable: i64,
    /// The last offsets of the segments ending at or after the asked offset, in order.
    pub ends: Vec<i64>,
}

/// What a segment write did.
#[derive(Debug, Clone)]
pub struct WrittenSegment {
    /// Its identity (a part of the range asked for when other segments held the rest).
    pub id: SegmentId,
    /// Path of the segment.
    pub path: PathBuf,
    /// Rows written.
    pub rows: usize,
    /// Bytes on disk.
    pub bytes: u64,
}

/// A directory of offset-named segments of one [`Table`], one sub-directory per stream.
#[derive(Debug, Clone)]
pub struct SegmentStore {
    root: PathBuf,
    table: Table,
}

impl SegmentStore {
    /// Opens (creating if needed) `table` under the store dir.
    pub fn open(store_dir: &Path, table: Table) -> Result<Self> {
        let root = store_dir.join(table.dir_name());
        std::fs::create_dir_all(&root).map_err(io("create", &root))?;
        Ok(Self { root, table })
    }

    /// The table.
    pub fn table(&self) -> Table {
        self.table
    }

    /// The directory of a stream (a source or a view).
    pub fn stream_dir(&self, stream: &str) -> PathBuf {
        self.root.join(stream)
    }

    /// Every segment of a stream, sorted by (partition, first offset). Temporary files left by
    /// a writer that has exited are removed on the way.
    pub fn segments(&self, stream: &str) -> Result<Vec<SegmentFile>> {
        self.list(stream, NaiveDate::MIN, true)
    }

    /// [`SegmentStore::segments`], and apart the segments another one covers (left by a
    /// compaction that stopped between writing a merged segment and removing its parts).
    pub(crate) fn list_all(&self, stream: &str) -> Result<(Vec<SegmentFile>, Vec<SegmentFile>)> {
        let all = self.list_with_covered(stream, NaiveDate::MIN, true)?;
        Ok(split_covered(all))
    }

    /// The segments of a stream dated `since` (UTC) or later, sorted like
    /// [`SegmentStore::segments`]: a segment's date directory is the day its write began, so a
    /// reader tailing recent segments skips the older days' directories without listing them.
    /// A reader's listing: it removes nothing (a writer it cannot see — another host, another
    /// PID namespace — may own a temporary file).
    pub fn segments_since(&self, stream: &str, since: NaiveDate) -> Result<Vec<SegmentFile>> {
        self.list(stream, since, false)
    }

    /// The segments of the date directories from `since` on, but those another segment covers
    /// (a merged segment whose parts are not removed yet); with `tidy`, temporary files of
    /// writers that have exited are removed on the way.
    fn list(&self, stream: &str, since: NaiveDate, tidy: bool) -> Result<Vec<SegmentFile>> {
        Ok(split_covered(self.list_with_covered(stream, since, tidy)?).0)
    }

    fn list_with_covered(
        &self,
        stream: &str,
        since: NaiveDate,
        tidy: bool,
    ) -> Result<Vec<SegmentFile>> {
        let dir = self.stream_dir(stream);
        let ext = self.table.extension();
        let mut out = Vec::new();
        let dates = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("list", &dir)(e)),
        };
        for date in dates {
            let date = date.map_err(io("list", &dir))?.path();
            if !date.is_dir() || date_of(&date).is_some_and(|d| d < since) {
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
                    if tidy && writer_gone(name) {
                        let _ = std::fs::remove_file(&path);
                    }
                    continue;
                }
                if let Some(id) = SegmentId::parse(name, ext) {
                    out.push(SegmentFile { id, path });
                }
            }
        }
        out.sort_by_key(|a| a.id);
        Ok(out)
    }

    /// The rows of a raw-store segment (Arrow IPC), in offset order.
    pub fn read_raw(&self, segment: &SegmentFile) -> Result<Vec<RecordBatch>> {
        let path = &segment.path;
        let file = File::open(path).map_err(io("open", path))?;
        let reader = FileReader::try_new(std::io::BufReader::new(file), None)?;
        Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// The named columns of a segment (Arrow IPC or Parquet, as the table is), decoding no
    /// other column of a Parquet segment; a column the segment lacks is left out.
    pub fn read_columns(&self, segment: &SegmentFile, columns: &[&str]) -> Result<RecordBatch> {
        let batches = match self.table {
            Table::Raw => self.read_raw(segment)?,
            Table::FeatureLog | Table::Scores | Table::Monitor => {
                let path = &segment.path;
                let file = File::open(path).map_err(io("open", path))?;
                let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
                let schema = builder.parquet_schema();
                let wanted: Vec<usize> = (0..schema.num_columns())
                    .filter(|&i| columns.contains(&schema.column(i).name()))
                    .collect();
                let mask = ProjectionMask::leaves(schema, wanted);
                builder
                    .with_projection(mask)
                    .build()?
                    .collect::<std::result::Result<Vec<_>, _>>()?
            }
        };
        project(batches, columns)
    }

    /// The newest value of an int64 or timestamp column of a segment (µs for timestamps;
    /// `None` when it has no rows) and its row count: from a Parquet segment's metadata without
    /// decoding a page when every row group has column statistics, else by reading the column.
    pub fn newest_in(&self, segment: &SegmentFile, column: &str) -> Result<(Option<i64>, usize)> {
        if self.table != Table::Raw {
            let path = &segment.path;
            let file = File::open(path).map_err(io("open", path))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
            let metadata = builder.metadata();
            let schema = metadata.file_metadata().schema_descr();
            let index = (0..schema.num_columns()).find(|&i| schema.column(i).name() == column);
            if let Some(index) = index {
                let mut newest: Option<i64> = None;
                let mut complete = true;
                for group in metadata.row_groups() {
                    match group.column(index).statistics() {
                        Some(parquet::file::statistics::Statistics::Int64(s)) => {
                            newest = newest.max(s.max_opt().copied());
                        }
                        _ => complete = false,
                    }
                }
                if complete {
                    let rows = usize::try_from(metadata.file_metadata().num_rows()).unwrap_or(0);
                    return Ok((newest, rows));
                }
            }
        }
        let batch = self.read_columns(segment, &[column])?;
        Ok((newest(&batch, column), batch.num_rows()))
    }

    /// What the stream holds of partition `partition`: its checkpoint, a `pending` segment
    /// resolved (folded in when it exists). Without a readable checkpoint (a store written
    /// before checkpoints, or a damaged file), it is rebuilt from a listing — and not saved:
    /// a reader holds no lock, and only writers (under the stream's lock) write checkpoints.
    pub fn checkpoint(&self, stream: &str, partition: i32) -> Result<Checkpoint> {
        let (cp, _) = self.resolved_checkpoint(stream, partition)?;
        Ok(cp)
    }

    /// [`SegmentStore::checkpoint`] for a caller holding the stream's lock: a rebuilt
    /// checkpoint, or one whose pending segment was resolved, is saved (durably) as it now is,
    /// so nothing later (a merge, a crash) can lose what the pending line said.
    pub(crate) fn checkpoint_locked(&self, stream: &str, partition: i32) -> Result<Checkpoint> {
        let (cp, changed) = self.resolved_checkpoint(stream, partition)?;
        if changed && (cp.durable.is_some() || cp.dropped.is_some()) {
            self.save_checkpoint(stream, partition, &cp, true)?;
        }
        Ok(cp)
    }

    /// The checkpoint with its pending segment resolved, and whether that differs from the
    /// file (rebuilt, or a pending line resolved).
    fn resolved_checkpoint(&self, stream: &str, partition: i32) -> Result<(Checkpoint, bool)> {
        let dir = self.stream_dir(stream);
        let text = read_small(&dir.join(checkpoint::file_name(partition)))?;
        let Some(mut cp) = text.and_then(|t| Checkpoint::decode(&t, partition)) else {
            let mut cp = Checkpoint::default();
            for segment in self.segments(stream)? {
                if segment.id.partition == partition {
                    cp.covers(segment.id);
                }
            }
            // What retention removed is not in any listing: its copy says.
            cp.dropped = read_small(&dir.join(checkpoint::dropped_file_name(partition)))?
                .and_then(|text| Checkpoint::decode(&text, partition))
                .and_then(|copy| copy.dropped);
            return Ok((cp, true));
        };
        let mut changed = false;
        if let Some((date, id)) = cp.pending.take() {
            changed = true;
            if self.segment_path(stream, date, id).exists() {
                cp.covers(id);
            }
        }
        Ok((cp, changed))
    }

    /// Where a stream's partition stands: the last offset its segments cover (or retention
    /// removed), and the ends at or after `from` of its segments (and of the segments merged
    /// into them), in order — read from the checkpoint, listing the segments only when some
    /// end at or after `from`.
    pub fn tail(&self, stream: &str, partition: i32, from: i64) -> Result<Tail> {
        let cp = self.checkpoint(stream, partition)?;
        let durable = cp.held_through().unwrap_or(-1);
        let mut ends = Vec::new();
        if durable >= from {
            for segment in self.segments(stream)? {
                if segment.id.partition == partition && segment.id.last_offset >= from {
                    ends.extend(
                        self.inner_ends(&segment)?
                            .into_iter()
                            .filter(|e| *e >= from),
                    );
                    ends.push(segment.id.last_offset);
                }
            }
        }
        Ok(Tail { durable, ends })
    }

    /// What retention removed of each partition of a stream.
    pub fn dropped(&self, stream: &str) -> Result<BTreeMap<i32, Dropped>> {
        let mut out = BTreeMap::new();
        for partition in self.checkpointed(stream)? {
            if let Some(dropped) = self.checkpoint(stream, partition)?.dropped {
                out.insert(partition, dropped);
            }
        }
        Ok(out)
    }

    /// Whether the stream holds anything: a segment, or a checkpoint of segments retention
    /// removed (a topic recreated under it must not inherit either).
    pub fn is_empty(&self, stream: &str) -> Result<bool> {
        Ok(self.segments(stream)?.is_empty() && self.checkpointed(stream)?.is_empty())
    }

    /// The partitions with a checkpoint file.
    pub(crate) fn checkpointed(&self, stream: &str) -> Result<Vec<i32>> {
        let dir = self.stream_dir(stream);
        let entries = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("list", &dir))?;
            if let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(checkpoint::partition_of)
            {
                out.push(p);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Replaces a partition's checkpoint file atomically; with `durable`, fsynced (file and
    /// directory) before returning.
    pub(crate) fn save_checkpoint(
        &self,
        stream: &str,
        partition: i32,
        cp: &Checkpoint,
        durable: bool,
    ) -> Result<()> {
        self.save_small(stream, &checkpoint::file_name(partition), cp, durable)
    }

    /// Saves the copy of a partition's `dropped` line (durably).
    pub(crate) fn save_dropped_copy(
        &self,
        stream: &str,
        partition: i32,
        cp: &Checkpoint,
    ) -> Result<()> {
        let copy = Checkpoint {
            dropped: cp.dropped,
            ..Checkpoint::default()
        };
        self.save_small(
            stream,
            &checkpoint::dropped_file_name(partition),
            &copy,
            true,
        )
    }

    fn save_small(&self, stream: &str, name: &str, cp: &Checkpoint, durable: bool) -> Result<()> {
        let dir = self.stream_dir(stream);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = dir.join(name);
        let tmp = dir.join(format!("{name}.tmp-{}", std::process::id()));
        let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
        std::io::Write::write_all(&mut file, cp.encode().as_bytes()).map_err(io("write", &tmp))?;
        if durable {
            file.sync_all().map_err(io("fsync", &tmp))?;
        }
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
        if durable {
            sync_dir(&dir)?;
        }
        Ok(())
    }

    fn segment_path(&self, stream: &str, date: NaiveDate, id: SegmentId) -> PathBuf {
        self.stream_dir(stream)
            .join(format!("date={}", date.format("%Y-%m-%d")))
            .join(id.file_name(self.table.extension()))
    }

    /// Moves a stream's segments aside to `<stream>.stale-<UTC time>` (they belong to an
    /// earlier incarnation of its topic) and returns the new location.
    pub fn retire(&self, stream: &str) -> Result<PathBuf> {
        let from = self.stream_dir(stream);
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let to = self.root.join(format!("{stream}.stale-{stamp}"));
        std::fs::rename(&from, &to).map_err(io("rename", &from))?;
        sync_dir(&self.root)?;
        Ok(to)
    }

    /// Writes the rows of `batch` (offsets `id.first_offset..=id.last_offset` of one partition,
    /// in an `_offset` column) durably and atomically, except offsets another segment of the
    /// stream already covers: each uncovered part of the range becomes a segment of its own
    /// (possibly empty, when every event of it was rejected), and a range wholly covered (a
    /// replay) writes nothing. The check and the writes hold the stream's lock, so concurrent
    /// writers never produce overlapping segments.
    pub fn append(
        &self,
        stream: &str,
        date: NaiveDate,
        id: SegmentId,
        batch: &RecordBatch,
    ) -> Result<Vec<WrittenSegment>> {
        let _lock = self.lock(stream)?;
        let cp = self.checkpoint_locked(stream, id.partition)?;
        if cp.held_through().is_none_or(|held| id.first_offset > held) {
            // Past every offset the partition has: nothing to check against.
            return Ok(vec![self.write_past(stream, date, id, batch, cp)?]);
        }
        let mut existing: Vec<SegmentId> = self
            .segments(stream)?
            .into_iter()
            .map(|s| s.id)
            .filter(|s| s.overlaps(&id))
            .collect();
        if let Some(dropped) = cp.dropped {
            // Offsets retention removed were written once: a replay of them writes nothing.
            existing.push(SegmentId {
                partition: id.partition,
                first_offset: i64::MIN,
                last_offset: dropped.through,
            });
        }
        let parts = id.uncovered(&existing);
        if parts == [id] {
            return Ok(vec![self.write(stream, date, id, batch)?]);
        }
        let mut out = Vec::with_capacity(parts.len());
        for part in parts {
            let rows = self.rows_within(stream, batch, part)?;
            out.push(self.write(stream, date, part, &rows)?);
        }
        Ok(out)
    }

    /// Writes one segment, atomically replacing a segment of the same name (the backfill
    /// rewrites the feature log segment by segment).
    pub fn replace(
        &self,
        stream: &str,
        date: NaiveDate,
        id: SegmentId,
        batch: &RecordBatch,
    ) -> Result<WrittenSegment> {
        let _lock = self.lock(stream)?;
        self.write(stream, date, id, batch)
    }

    /// Removes a segment (one a backfill's rewrite superseded).
    pub fn remove(&self, segment: &SegmentFile) -> Result<()> {
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

    /// The stream's maintenance lock: held by a compaction and by a backfill rewriting the
    /// stream for their whole run, so they never work on the same segments at once (writers
    /// of new segments do not take it).
    pub fn maintenance_lock(&self, stream: &str) -> Result<File> {
        self.lock_file(stream, ".maintenance")
    }

    /// The stream's lock: held while a writer checks for overlaps and renames into place.
    pub(crate) fn lock(&self, stream: &str) -> Result<File> {
        self.lock_file(stream, ".lock")
    }

    fn lock_file(&self, stream: &str, name: &str) -> Result<File> {
        let dir = self.stream_dir(stream);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = dir.join(name);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        file.lock().map_err(io("lock", &path))?;
        Ok(file)
    }

    fn rows_within(
        &self,
        stream: &str,
        batch: &RecordBatch,
        part: SegmentId,
    ) -> Result<RecordBatch> {
        let offsets = batch
            .column_by_name(OFFSET_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or_else(|| Error::NoOffsets(self.stream_dir(stream)))?;
        let keep: BooleanArray = offsets
            .iter()
            .map(|o| o.map(|o| part.first_offset <= o && o <= part.last_offset))
            .collect();
        Ok(filter_record_batch(batch, &keep)?)
    }

    /// Writes one segment (the caller holds the stream's lock), keeping the partition's
    /// checkpoint in step.
    pub(crate) fn write(
        &self,
        stream: &str,
        date: NaiveDate,
        id: SegmentId,
        batch: &RecordBatch,
    ) -> Result<WrittenSegment> {
        let cp = self.checkpoint_locked(stream, id.partition)?;
        if cp.durable.is_some_and(|d| id.last_offset <= d) {
            return self.encode_into_place(stream, date, id, batch, None);
        }
        self.write_past(stream, date, id, batch, cp)
    }

    /// Writes a segment reaching past the partition's checkpoint: announced as pending
    /// (durably) before its rename, folded into `durable` after, so a crash in between never
    /// leaves a segment the checkpoint does not account for.
    fn write_past(
        &self,
        stream: &str,
        date: NaiveDate,
        id: SegmentId,
        batch: &RecordBatch,
        mut cp: Checkpoint,
    ) -> Result<WrittenSegment> {
        cp.pending = Some((date, id));
        self.save_checkpoint(stream, id.partition, &cp, true)?;
        let written = self.encode_into_place(stream, date, id, batch, None)?;
        cp.pending = None;
        cp.covers(id);
        // Durable too: a file some filesystems keep empty after a power loss would say
        // nothing of the partition.
        self.save_checkpoint(stream, id.partition, &cp, true)?;
        Ok(written)
    }

    /// Encodes and renames one segment into place, with a file metadata entry if given (the
    /// caller holds the stream's lock).
    pub(crate) fn encode_into_place(
        &self,
        stream: &str,
        date: NaiveDate,
        id: SegmentId,
        batch: &RecordBatch,
        metadata: Option<(&str, String)>,
    ) -> Result<WrittenSegment> {
        let path = self.segment_path(stream, date, id);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(io("write", &path)(std::io::ErrorKind::InvalidInput.into()));
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp).map_err(io("create", &tmp))?;
        let file = match self.table {
            Table::Raw => encode_ipc(file, batch, metadata)?,
            Table::FeatureLog | Table::Scores | Table::Monitor => {
                encode_parquet(file, batch, metadata, self.table)?
            }
        };
        file.sync_all().map_err(io("fsync", &tmp))?;
        let bytes = file.metadata().map_err(io("stat", &tmp))?.len();
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
        sync_dir(dir)?;
        Ok(WrittenSegment {
            id,
            path,
            rows: batch.num_rows(),
            bytes,
        })
    }
}

/// The newest value of an event-time column (int64 or a timestamp, as µs).
pub(crate) fn newest(batch: &RecordBatch, column: &str) -> Option<i64> {
    let col = batch.column_by_name(column)?;
    let ints = match col.data_type() {
        DataType::Int64 => col.as_any().downcast_ref::<Int64Array>().cloned(),
        _ => arrow::compute::cast(col, &DataType::Int64)
            .ok()?
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned(),
    }?;
    arrow::compute::max(&ints)
}

/// The text of a small file, `None` when there is none.
fn read_small(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// Splits sorted segments into those no other one covers and those another one covers (a
/// merged segment and the parts it replaced; the parts go).
fn split_covered(sorted: Vec<SegmentFile>) -> (Vec<SegmentFile>, Vec<SegmentFile>) {
    let mut kept: Vec<SegmentFile> = Vec::with_capacity(sorted.len());
    let mut covered = Vec::new();
    for segment in sorted {
        let id = segment.id;
        // Sorted by (partition, first, last): a segment covering this one starts at or before
        // it, and the widest such is the last kept one reaching furthest.
        if let Some(last) = kept.last()
            && last.id.partition == id.partition
            && last.id.first_offset <= id.first_offset
            && id.last_offset <= last.id.last_offset
        {
            covered.push(segment);
            continue;
        }
        // Same first offset, wider: this one covers those kept before it.
        while let Some(last) = kept.last()
            && last.id.partition == id.partition
            && last.id.first_offset >= id.first_offset
            && last.id.last_offset <= id.last_offset
        {
            if let Some(gone) = kept.pop() {
                covered.push(gone);
            }
        }
        kept.push(segment);
    }
    (kept, covered)
}

/// `batches` as one batch of those of `columns` they have (a reader checks for the ones it
/// needs by name).
fn project(batches: Vec<RecordBatch>, columns: &[&str]) -> Result<RecordBatch> {
    let Some(first) = batches.first() else {
        return Ok(RecordBatch::new_empty(std::sync::Arc::new(
            arrow::datatypes::Schema::empty(),
        )));
    };
    let schema = first.schema();
    let indexes: Vec<usize> = columns
        .iter()
        .filter_map(|c| schema.index_of(c).ok())
        .collect();
    let batch = arrow::compute::concat_batches(&schema, &batches)?;
    Ok(batch.project(&indexes)?)
}

fn encode_ipc(file: File, batch: &RecordBatch, metadata: Option<(&str, String)>) -> Result<File> {
    let mut writer = FileWriter::try_new(file, &batch.schema())?;
    if let Some((key, value)) = metadata {
        writer.write_metadata(key, value);
    }
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

fn encode_parquet(
    file: File,
    batch: &RecordBatch,
    metadata: Option<(&str, String)>,
    table: Table,
) -> Result<File> {
    // The monitor's history is a few rows per evaluation: compressing them costs more (a
    // compression context per column) than it saves.
    let compression = match table {
        Table::Monitor => Compression::UNCOMPRESSED,
        Table::Raw | Table::FeatureLog | Table::Scores => Compression::ZSTD(ZstdLevel::try_new(1)?),
    };
    let props = WriterProperties::builder()
        .set_compression(compression)
        .build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    if let Some((key, value)) = metadata {
        writer.append_key_value_metadata(parquet::file::metadata::KeyValue::new(
            key.to_string(),
            value,
        ));
    }
    writer.write(batch)?;
    Ok(writer.into_inner()?)
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
    fn a_segment_another_covers_is_hidden() {
        let seg = |partition, first, last| SegmentFile {
            id: SegmentId {
                partition,
                first_offset: first,
                last_offset: last,
            },
            path: PathBuf::new(),
        };
        let mut all = vec![
            seg(0, 0, 9),
            seg(0, 0, 39),
            seg(0, 10, 19),
            seg(0, 20, 39),
            seg(0, 40, 49),
            seg(1, 0, 9),
            seg(1, 10, 19),
        ];
        all.sort_by_key(|s| s.id);
        let (kept, covered) = split_covered(all);
        let ids = |v: &[SegmentFile]| v.iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(
            ids(&kept),
            ids(&[seg(0, 0, 39), seg(0, 40, 49), seg(1, 0, 9), seg(1, 10, 19)])
        );
        assert_eq!(
            ids(&covered),
            ids(&[seg(0, 0, 9), seg(0, 10, 19), seg(0, 20, 39)])
        );
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
}
