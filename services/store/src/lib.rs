//! Quiver's file stores: the **raw store** (every valid event, Arrow IPC), the **feature log**
//! (the vector as of every event, per view, Parquet) and the **score store** (every prediction,
//! Parquet). They are one [`SegmentStore`] each, differing only by their [`Table`]: the same
//! layout, the same atomic writes, the same offset bookkeeping. This crate owns that layout; it
//! knows nothing of Kafka, Redis or features.
//!
//! ```text
//! <store.dir>/<table dir>/<stream>/date=YYYY-MM-DD/part-PPPPP-FFFFFFFFFFFFFFFFFFFF-LLLLLLLLLLLLLLLLLLLL.<ext>
//! ```
//!
//! A stream is a source (raw store, score store) or a view (feature log). One file holds one
//! segment of one source partition, named by the first and last Kafka offsets it covers
//! (rejected events included, so ranges are contiguous). `date` is the UTC date the segment was
//! written: the stores are arrival-ordered logs, replayed in (partition, offset) order.
//!
//! **Atomic and exclusive.** A segment is written to a hidden temporary file, fsynced, renamed
//! into place and its directory fsynced, so it exists whole or not at all. Under a per-stream
//! lock, a new segment is never written over offsets an existing one covers: only the parts of
//! its range no segment holds yet are written ([`SegmentStore::append`]). So each offset lands
//! in exactly one segment even when two writers race (a member that lost its partition and the
//! one that has it now), and a replay after a crash writes nothing twice.
//!
//! **Checkpoints.** Each partition of a stream has a small checkpoint file (the last offset its
//! segments cover, and what retention removed), so a writer appending past it and a worker
//! taking the partition over learn where it stands without listing every segment
//! ([`SegmentStore::tail`], [`Checkpoint`]).
//!
//! **Bounded growth.** [`SegmentStore::compact`] removes the date directories a retention no
//! longer keeps and merges runs of small segments ([`compact`]).

mod checkpoint;
pub mod compact;
mod segment;
mod store;

pub use checkpoint::{Checkpoint, Dropped};
pub use segment::{SegmentFile, SegmentId};
pub use store::{SegmentStore, Tail, WrittenSegment};

use std::path::{Path, PathBuf};

use quiver_core::Retry;

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
    /// A batch does not have the `_offset` column every table carries.
    #[error("a batch for {0} has no int64 `_offset` column")]
    NoOffsets(PathBuf),
}

impl Error {
    /// Filesystem errors (a full disk, a network mount away) may heal; a batch that does not
    /// encode will not.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Io { .. } => Retry::Transient,
            Error::Arrow(_) | Error::Parquet(_) | Error::NoOffsets(_) => Retry::Permanent,
        }
    }
}

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The monitor table's one stream (`<store>/monitor/history/`), read as the `monitor` table.
pub const MONITOR_STREAM: &str = "history";

/// The kinds of segment tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// The raw store: `raw/<source>/…/*.arrow` (Arrow IPC).
    Raw,
    /// The feature log: `offline/<view>/…/*.parquet` (zstd Parquet).
    FeatureLog,
    /// The score store: `scores/<source>/…/*.parquet` (zstd Parquet).
    Scores,
    /// The monitor's history: `monitor/<stream>/…/*.parquet`, a segment per evaluation named by
    /// its window's end (ms) instead of offsets.
    Monitor,
}

impl Table {
    /// Its directory under the store dir.
    pub fn dir_name(self) -> &'static str {
        match self {
            Table::Raw => "raw",
            Table::FeatureLog => "offline",
            Table::Scores => "scores",
            Table::Monitor => "monitor",
        }
    }

    /// Its files' extension.
    pub fn extension(self) -> &'static str {
        match self {
            Table::Raw => "arrow",
            Table::FeatureLog | Table::Scores | Table::Monitor => "parquet",
        }
    }
}
