//! `quiver ingest`: Kafka → Arrow raw store, with dead letters and durable-then-commit offsets.
//!
//! One consumer-group member per process, run on a dedicated blocking thread ([`run`]):
//!
//! 1. messages are copied into a per-partition buffer;
//! 2. a buffer is flushed when it reaches `ingest.segment_max_events` / `segment_max_bytes` or
//!    its oldest message is `segment_max_age_ms` old: decoded in one vectorised pass, rejected
//!    events sent to `<topic>.dlq` and acknowledged, the valid ones written as one fsynced raw
//!    segment named by the partition and offset range;
//! 3. only then does the partition's committable offset advance (to last + 1); commits go out
//!    every `commit_interval_ms`, and synchronously on revoke and shutdown.
//!
//! The consumer's rebalance callback runs inside `poll` on the same thread; it shares the
//! pipeline state through a mutex that the loop never holds across `poll`, so on revoke it can
//! drain the revoked partitions and commit before they move. On assignment it reads the last
//! durable offset of each partition from the raw store; anything at or below it is a replay and
//! is skipped, which is what makes a crash between write and commit harmless.

mod events;
mod features;
mod pipeline;
mod service;

pub use service::{IngestReport, IngestStats, Shutdown, run};

/// Result alias used across `quiver-ingest`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the ingest service.
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
    /// The raw store failed.
    #[error(transparent)]
    Store(#[from] quiver_store::Error),
    /// A feature-log batch could not be built.
    #[error(transparent)]
    Features(#[from] quiver_features::Error),
    /// Redis (the online store) failed or is unreachable.
    #[error("{0}")]
    Redis(String),
    /// Dead letters could not be delivered.
    #[error("dead-letter delivery to {topic} failed: {detail}")]
    DeadLetter {
        /// Dead-letter topic.
        topic: String,
        /// Cause.
        detail: String,
    },
    /// An unrecoverable condition that stopped the loop.
    #[error("ingest stopped: {0}")]
    Fatal(String),
}
