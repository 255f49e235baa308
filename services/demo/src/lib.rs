//! `quiver demo produce`: realistic synthetic card transactions with a hidden fraud pattern,
//! and their labels, delayed as chargebacks are in real life.
//!
//! The generator ([`Generator`]) is pure and seeded: the same seed gives the same users,
//! merchants, amounts and fraud decisions. The producer ([`produce`]) paces it at a rate and
//! writes `transactions` and `labels`, keyed by `user_id` so one user's events stay in order.

mod generator;
mod producer;

pub use generator::{Generator, GeneratorOptions, Transaction};
pub use producer::{EventClock, ProduceOptions, ProduceProgress, ProduceReport, produce};

/// Result alias used across `quiver-demo`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the demo producer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The schemas lack a source the demo writes.
    #[error("the demo needs a source named `{0}` in schemas/sources")]
    MissingSource(String),
    /// The broker is unreachable or topics are missing.
    #[error(transparent)]
    Kafka(#[from] quiver_kafka::Error),
    /// The producer could not be created or failed.
    #[error("kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    /// Deliveries failed.
    #[error("{0} messages could not be delivered")]
    Undelivered(u64),
}
