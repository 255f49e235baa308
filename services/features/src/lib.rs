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
//! - [`state`]: one entity's tiles (each window group's flat, in `tiles`),
//!   [`state::ViewPlan::apply`] and [`state::ViewPlan::read`];
//! - [`shards`]: an entity's state split per source partition, and the one vector-as-of-an-event
//!   ([`shards::EntityShards::vector_as_of`]) the streaming worker, the batch replay and the API
//!   all compute through;
//! - [`bind`]: a view bound to its source's columns ([`bind::BoundView`]);
//! - [`log`]: the feature log's Arrow layout.

pub mod bind;
pub mod definition;
pub use quiver_core::duration;
pub mod hll;
pub mod log;
pub mod order;
pub mod partial;
pub mod shards;
pub mod state;
mod tiles;
pub mod value;

pub use bind::{BoundRows, BoundView};
pub use definition::{Aggregation, FeatureView, Op, ViewCatalog, Window};
pub use order::{Clock, Seq};
pub use shards::{EntityShards, Shard};
pub use state::{Applied, EntityState, ReadCache, ViewPlan};
pub use value::{AsInput, Input, Value};

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
