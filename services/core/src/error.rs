//! The error type of the core crate.

use std::path::PathBuf;

/// Result alias used across `quiver-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors raised while loading configuration or schemas, or decoding events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration is invalid; every problem found is listed, one per line.
    #[error("invalid configuration:\n{}", .0.join("\n"))]
    Config(Vec<String>),

    /// Schema definitions are invalid; every problem found is listed, one per line.
    #[error("invalid schemas:\n{}", .0.join("\n"))]
    Schema(Vec<String>),

    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// An Arrow operation failed on data that had already been validated (a bug, not bad input).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Whether an operation that failed may succeed if retried: the classification every Quiver
/// error carries, so callers back off on what can heal (a broker or Redis that comes back) and
/// stop with a clear message on what cannot (a schema mismatch, corrupt data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A dependency is unavailable or busy: retry with backoff.
    Transient,
    /// Retrying the same input cannot succeed.
    Permanent,
}

impl Error {
    /// How to treat this error: loading and decoding problems are permanent, except file reads.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Io { .. } => Retry::Transient,
            Error::Config(_) | Error::Schema(_) | Error::Arrow(_) => Retry::Permanent,
        }
    }
}
