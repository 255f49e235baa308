//! Quiver's feature semantics, as one pure library (no I/O): feature-view definitions, mergeable
//! partial aggregates, Chronon-style tiles with the sawtooth window rule, lateness, and
//! read-time finalisation at any time `t`.
//!
//! This is the single implementation the streaming path, the online API and the batch backfill
//! call, which is what makes online and offline values agree: the same events applied in the
//! same (arrival) order through the same code give bit-identical state.
//!
//! - [`definition`]: views and aggregations, parsed from `schemas/views/*.toml` and validated
//!   against the source schemas;
//! - [`partial`]: per-operation partial aggregates (`count`, `sum`, `mean`, `min`, `max`, `last`,
//!   `distinct_count` via [`hll`], `stddev`);
//! - [`state`]: one entity's tiles, [`state::EntityState::apply`] and
//!   [`state::EntityState::read`].

pub mod definition;
pub mod duration;
pub mod hll;
pub mod log;
pub mod partial;
pub mod state;
pub mod value;

pub use definition::{Aggregation, FeatureView, Op, ViewCatalog, Window};
pub use state::{Applied, EntityState, ReadCache, Seq, ViewPlan};
pub use value::Value;

/// Result alias used across `quiver-features`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of feature definitions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Feature definitions are invalid; every problem is listed, one per line.
    #[error("invalid feature definitions:\n{}", .0.join("\n"))]
    Definition(Vec<String>),
    /// The definition files could not be read.
    #[error(transparent)]
    Core(#[from] quiver_core::Error),
    /// A feature-log batch could not be built or read.
    #[error("feature log: {0}")]
    Log(String),
    /// Arrow rejected a feature-log batch.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}
