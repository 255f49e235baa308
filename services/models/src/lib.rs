//! Models: training and evaluation with smartcore ([`train`], [`metrics`]), the serialisable
//! model the scorer runs ([`model`]) and the registry of candidates and deployments
//! ([`registry`]).

pub mod baseline;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod train;

pub use baseline::Baseline;
pub use metrics::Metrics;
pub use model::{FeatureLookup, Model, Rejection};
pub use registry::{Canary, Deployment, ModelCard, Registry};
pub use train::{Dataset, Kind, Params, Trained};

/// Result alias used across `quiver-models`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of training, the registry and inference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: unknown model, missing columns, an empty class, ...
    #[error("{0}")]
    Invalid(String),
    /// smartcore failed, or a model could not be (de)serialised.
    #[error("model: {0}")]
    Model(String),
    /// A registry or dataset file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A dataset file is not readable Parquet.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Arrow failed on a dataset batch.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// A vector that cannot be scored.
    #[error("{}: {detail}", reason.code())]
    Rejected {
        /// Why.
        reason: Rejection,
        /// What exactly.
        detail: String,
    },
}
