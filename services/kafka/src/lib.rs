//! Kafka plumbing shared by Quiver's services: client configuration from `[kafka]`, start-up
//! reachability checks, topic creation and the dead-letter header names. Everything here speaks
//! only the Kafka protocol, so Apache Kafka, Redpanda and tansu behave the same.

use std::time::Duration;

use quiver_core::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Result alias used across `quiver-kafka`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker did not answer a metadata request in time.
    #[error(
        "cannot reach Kafka at {brokers} within {timeout_ms} ms ({detail}); is the broker running? (`quiver stack up` starts a local one)"
    )]
    Unreachable {
        /// Bootstrap servers.
        brokers: String,
        /// How long we waited.
        timeout_ms: u64,
        /// librdkafka's error.
        detail: String,
    },
    /// Topics Quiver needs do not exist.
    #[error("topics missing on the broker: {}; create them (`quiver stack up` creates the declared ones)", .0.join(", "))]
    MissingTopics(Vec<String>),
    /// Any other client error.
    #[error("kafka {context}: {source}")]
    Client {
        /// What was being done.
        context: &'static str,
        /// The client error.
        source: KafkaError,
    },
}

/// Dead-letter header names.
pub mod headers {
    /// Reason code (`not_json`, `wrong_type`, ...).
    pub const REASON: &str = "quiver.reason";
    /// Human-readable detail.
    pub const ERROR: &str = "quiver.error";
    /// Source topic.
    pub const SOURCE_TOPIC: &str = "quiver.source.topic";
    /// Source partition.
    pub const SOURCE_PARTITION: &str = "quiver.source.partition";
    /// Source offset.
    pub const SOURCE_OFFSET: &str = "quiver.source.offset";
    /// Set on a marker sent instead of a dead letter too large for its topic: the size of the
    /// payload left out (bytes). The event itself stays in the source topic at its offset.
    pub const TRUNCATED: &str = "quiver.truncated";
}

/// A client configuration with the bootstrap servers and the pass-through properties.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// Consumer-only properties (session/heartbeat/fetch tuning) that a producer or admin client
/// would warn about.
const CONSUMER_ONLY: &[&str] = &[
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
];

/// A client configuration for producers and admin clients (consumer-only properties left out).
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in &kafka.properties {
        if !CONSUMER_ONLY.contains(&key.as_str()) {
            config.set(key, value);
        }
    }
    config
}

/// Lists the broker's topics, failing with [`Error::Unreachable`] if it does not answer in time.
pub fn list_topics(kafka: &KafkaConfig) -> Result<Vec<String>> {
    let consumer: BaseConsumer =
        producer_config(kafka)
            .create()
            .map_err(|source| Error::Client {
                context: "client",
                source,
            })?;
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    let metadata = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| Error::Unreachable {
            brokers: kafka.brokers.clone(),
            timeout_ms: kafka.connect_timeout_ms,
            detail: e.to_string(),
        })?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect())
}

/// Fails unless every topic in `needed` exists.
pub fn require_topics(kafka: &KafkaConfig, needed: &[String]) -> Result<()> {
    let present = list_topics(kafka)?;
    let missing: Vec<String> = needed
        .iter()
        .filter(|t| !present.contains(t))
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingTopics(missing))
    }
}

/// What happened to a topic in [`create_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// Created now.
    Created,
    /// Already there.
    Existed,
}

/// Creates topics (name, partitions) that do not exist yet; existing ones are left as they are.
pub async fn create_topics(
    kafka: &KafkaConfig,
    topics: &[(String, i32)],
) -> Result<Vec<(String, TopicOutcome)>> {
    let present = list_topics(kafka)?;
    let admin: AdminClient<DefaultClientContext> =
        producer_config(kafka)
            .create()
            .map_err(|source| Error::Client {
                context: "admin client",
                source,
            })?;
    let wanted: Vec<&(String, i32)> = topics
        .iter()
        .filter(|(name, _)| !present.contains(name))
        .collect();
    let mut out: Vec<(String, TopicOutcome)> = topics
        .iter()
        .filter(|(name, _)| present.contains(name))
        .map(|(name, _)| (name.clone(), TopicOutcome::Existed))
        .collect();
    if wanted.is_empty() {
        return Ok(out);
    }
    let new: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_millis(kafka.connect_timeout_ms)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|source| Error::Client {
            context: "create topics",
            source,
        })?;
    for result in results {
        match result {
            Ok(name) => out.push((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                out.push((name, TopicOutcome::Existed))
            }
            Err((_, code)) => {
                return Err(Error::Client {
                    context: "create topics",
                    source: KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(out)
}
