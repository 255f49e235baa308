//! `quiver ingest`: the one streaming worker. For every event of its partitions it writes the
//! raw store, folds the event into the feature state, computes the vector as of the event
//! (including it), scores that very vector with the deployed model(s) and emits the prediction —
//! in one pass, at two speeds:
//!
//! - **the hot path** ([`hot`]), per poll batch of a partition and without waiting for any
//!   fsync: decode → apply to the in-memory state ([`cache`]) → vectors → scores → the claim
//!   ([`claims`]) → predictions produced ([`delivery`]);
//! - **the durable path** ([`flusher`], its own thread), on the segment thresholds: the raw
//!   segment, the feature-log segments, the score-store segment and the Redis shards of the
//!   entities touched, in that order.
//!
//! A partition's offset is committed only once the durable path and every produced message
//! (predictions, dead letters) cover it ([`partition`]). A crash replays from the commit: each
//! store keeps what it already has, the state resumes from Redis, and a claim recorded before a
//! prediction left the process makes the replay re-emit exactly that prediction. A member that
//! lost its partitions never writes for them again: its pending flushes are fenced, Redis refuses
//! shard writes that would move an applied offset backwards, and the stores refuse segments
//! overlapping existing ones.
//!
//! Files by concern: [`worker`] (the state the poll loop and the rebalance callbacks share),
//! [`consumer`] (client set-up, callbacks, the poll loop), [`sources`] (sources and views bound
//! to their columns), [`deploy`] (models and deployment), [`prediction`] (what goes on the
//! predictions topic), [`events`] (every metric and log line of the worker).

mod cache;
mod claims;
mod consumer;
mod delivery;
mod deploy;
mod events;
mod failpoint;
mod flusher;
mod hot;
mod partition;
mod prediction;
mod rebuild;
mod scores;
mod sources;
mod worker;

pub use consumer::run;
pub use prediction::Variant;
pub use worker::{IngestReport, IngestStats, Shutdown};

use quiver_core::Retry;

/// Result alias used across `quiver-ingest`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the streaming worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or schemas are unusable.
    #[error(transparent)]
    Core(#[from] quiver_core::Error),
    /// The broker is unreachable or topics are missing.
    #[error(transparent)]
    Kafka(#[from] quiver_kafka::Error),
    /// A client operation failed.
    #[error("kafka {context}: {source}")]
    Client {
        /// What was being done.
        context: &'static str,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
    /// A file store failed.
    #[error(transparent)]
    Store(#[from] quiver_store::Error),
    /// Feature definitions or a feature-log batch are unusable.
    #[error(transparent)]
    Features(#[from] quiver_features::Error),
    /// The online store failed.
    #[error(transparent)]
    Online(#[from] quiver_online::Error),
    /// Redis does not answer at start-up.
    #[error("cannot reach Redis at {url}: {source}")]
    Unreachable {
        /// `redis.url`, credentials redacted.
        url: String,
        /// Cause.
        source: quiver_online::Error,
    },
    /// The model registry failed.
    #[error(transparent)]
    Models(#[from] quiver_models::Error),
    /// A message to the broker (prediction or dead letter) was not delivered.
    #[error("delivery to {topic} failed: {detail}")]
    Delivery {
        /// Topic.
        topic: String,
        /// Cause.
        detail: String,
    },
    /// A claim recorded in Redis does not decode.
    #[error("claim of {source_name}/{partition}: {detail}")]
    Claim {
        /// Source.
        source_name: String,
        /// Partition.
        partition: i32,
        /// Cause.
        detail: String,
    },
    /// A view's definition changed since its online state was written: its shards have
    /// another layout, which the worker must neither read nor mix with its own.
    #[error(
        "view `{view}` changed since its online state was written (definition {recorded:016x}, now {current:016x}): stop every ingest worker, rebuild the view with `quiver backfill --materialize --view {view}`, then start them again"
    )]
    DefinitionChanged {
        /// View.
        view: String,
        /// The fingerprint recorded in Redis.
        recorded: u64,
        /// The fingerprint of the definition loaded now.
        current: u64,
    },
    /// Redis holds less of a partition's online state than it acknowledged (it crashed between
    /// two fsyncs, or failed over to a replica that was behind): the partition is re-applied
    /// from below what Redis lost.
    #[error(
        "Redis lost acknowledged writes of view `{view}`, partition {partition}: it holds its shards through offset {held}, this worker had written them through {expected}; re-applying from there"
    )]
    OnlineStateBehind {
        /// View.
        view: String,
        /// Partition.
        partition: i32,
        /// The last offset this worker had recorded.
        expected: i64,
        /// What Redis holds (`-1`: nothing).
        held: i64,
    },
    /// Another partition found that Redis lost acknowledged writes: this one's online state is
    /// checked again too (it restarts from its commit, reading how far Redis holds it).
    #[error("Redis lost acknowledged writes (found on {found_on}): checking this partition again")]
    RedisLostWrites {
        /// `<view>/<partition>` where it was found.
        found_on: String,
    },
    /// An unrecoverable condition that stopped the worker.
    #[error("ingest stopped: {0}")]
    Fatal(String),
}

impl Error {
    /// How the worker treats the error: transient ones (a broker or Redis away, a delivery
    /// that timed out, a disk that may free up) pause the partition and retry with backoff;
    /// permanent ones stop the partition with this message.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Core(e) => e.retry(),
            Error::Store(e) => e.retry(),
            Error::Online(e) | Error::Unreachable { source: e, .. } => e.retry(),
            Error::Kafka(_)
            | Error::Client { .. }
            | Error::Delivery { .. }
            | Error::OnlineStateBehind { .. }
            | Error::RedisLostWrites { .. } => Retry::Transient,
            Error::Models(quiver_models::Error::Io { .. }) => Retry::Transient,
            Error::Models(_)
            | Error::Features(_)
            | Error::Claim { .. }
            | Error::DefinitionChanged { .. }
            | Error::Fatal(_) => Retry::Permanent,
        }
    }
}
