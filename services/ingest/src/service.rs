//! The consumer-group member: client set-up, the rebalance callback and the poll loop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quiver_core::{Catalog, Config};
use quiver_features::ViewCatalog;
use quiver_store::{OfflineStore, RawStore};

use crate::features::Features;
use quiver_telemetry::Health;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{error, info, warn};

use crate::pipeline::Pipeline;
use crate::{Error, Result};

/// How often the loop looks at flush deadlines.
const TICK: Duration = Duration::from_millis(20);
/// ... at most once per this many messages while messages flow.
const TICK_EVERY: u32 = 256;

/// A cooperative stop flag, set from a signal handler or a test.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Asks the loop to drain, commit and return.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a stop was asked for.
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Live counters, readable while the service runs (progress lines, tests).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Valid events written to the raw store.
    pub events: AtomicU64,
    /// Events sent to dead-letter topics.
    pub dead_letters: AtomicU64,
    /// Segments written.
    pub segments: AtomicU64,
    /// Segment bytes written.
    pub bytes: AtomicU64,
    /// Replayed events skipped.
    pub replay_skipped: AtomicU64,
    /// Successful commits.
    pub commits: AtomicU64,
    /// Events folded into online feature state (all views).
    pub features_applied: AtomicU64,
    /// Events dropped from aggregation for lateness (all views).
    pub features_late: AtomicU64,
}

/// What a finished run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestReport {
    /// Valid events written.
    pub events: u64,
    /// Dead letters sent.
    pub dead_letters: u64,
    /// Segments written.
    pub segments: u64,
}

/// Counts failed dead-letter deliveries.
#[derive(Debug, Default)]
pub(crate) struct DlqContext {
    pub(crate) failures: AtomicU64,
}

impl ClientContext for DlqContext {}

impl ProducerContext for DlqContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            self.failures.fetch_add(1, Ordering::AcqRel);
            warn!(topic = message.topic(), %error, "dead-letter delivery failed");
        }
    }
}

/// The consumer context: rebalance handling on the shared pipeline, broker-health tracking.
struct IngestContext {
    pipeline: Arc<Mutex<Pipeline>>,
    health: Health,
}

fn lock(pipeline: &Mutex<Pipeline>) -> MutexGuard<'_, Pipeline> {
    // A panic while holding the lock cannot leave half-written segments (writes are atomic), so
    // the state is still usable.
    pipeline
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ClientContext for IngestContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.health.set_not_ready("all brokers down");
        }
        warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => lock(&self.pipeline).revoke(consumer, tpl),
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            lock(&self.pipeline).assign(tpl);
        }
    }
}

fn pause_list(consumer: &BaseConsumer<IngestContext>, parts: &[(String, i32)], pause: bool) {
    if parts.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in parts {
        tpl.add_partition(topic, *partition);
    }
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(error) = result {
        warn!(%error, pause, "cannot change partition pause state");
    }
}

/// Runs the ingest member until `shutdown` is triggered; blocking (give it its own thread).
///
/// Fails fast with one clear error if the broker is unreachable or topics are missing.
pub fn run(
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
    shutdown: Shutdown,
    health: Health,
    stats: Arc<IngestStats>,
) -> Result<IngestReport> {
    let sources = catalog.select(&config.ingest.sources)?;
    let store = RawStore::open(&config.store.dir)?;
    let features = Features::new(
        config,
        &sources,
        views,
        OfflineStore::open(&config.store.dir)?,
    )?;

    let dlq: ThreadedProducer<DlqContext> = quiver_kafka::producer_config(&config.kafka)
        .set("linger.ms", "5")
        .create_with_context(DlqContext::default())
        .map_err(|source| Error::Client {
            context: "create dead-letter producer",
            source,
        })?;
    let pipeline = Arc::new(Mutex::new(Pipeline::new(
        config,
        &sources,
        store,
        features,
        dlq,
        stats.clone(),
    )));
    let (topics, dlq_topics) = {
        let p = lock(&pipeline);
        (p.topics(), p.dlq_topics())
    };
    let mut needed = topics.clone();
    needed.extend(dlq_topics);
    quiver_kafka::require_topics(&config.kafka, &needed)?;

    let consumer: BaseConsumer<IngestContext> = quiver_kafka::client_config(&config.kafka)
        .set("group.id", &config.ingest.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(IngestContext {
            pipeline: pipeline.clone(),
            health: health.clone(),
        })
        .map_err(|source| Error::Client {
            context: "create consumer",
            source,
        })?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_refs)
        .map_err(|source| Error::Client {
            context: "subscribe",
            source,
        })?;
    info!(topics = %topics.join(","), group = %config.ingest.group_id, store = %config.store.dir.display(), "ingest started");
    health.set_ready();

    let commit_every = Duration::from_millis(config.ingest.commit_interval_ms);
    let mut last_commit = Instant::now();
    let mut last_tick = Instant::now();
    let mut since_tick = 0u32;
    while !shutdown.is_triggered() {
        let idle = match consumer.poll(TICK) {
            Some(Ok(msg)) => {
                let due = lock(&pipeline).accept(
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    msg.key(),
                    msg.payload(),
                );
                if let Some((index, partition)) = due {
                    let mut p = lock(&pipeline);
                    if let Err(error) = p.flush(index, partition) {
                        // Retried with backoff by flush_due; the partition is paused there.
                        warn!(partition, %error, "size-triggered flush failed");
                    }
                }
                false
            }
            Some(Err(error)) => {
                warn!(%error, "consumer error");
                false
            }
            None => true,
        };
        // Reading the clock per message is measurable at these rates: look at the deadlines
        // every TICK_EVERY messages, or whenever the queue runs dry.
        since_tick += 1;
        if !idle && since_tick < TICK_EVERY {
            continue;
        }
        since_tick = 0;
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            let mut p = lock(&pipeline);
            if let Some(reason) = p.fatal.take() {
                health.set_not_ready(reason.clone());
                return Err(Error::Fatal(reason));
            }
            let changes = p.flush_due(false);
            pause_list(&consumer, &changes.pause, true);
            pause_list(&consumer, &changes.resume, false);
            if p.degraded() {
                health.set_not_ready("segment flushes failing (raw store or dead-letter topic)");
            } else if !health.is_ready() {
                health.set_ready();
            }
            if last_commit.elapsed() >= commit_every {
                last_commit = Instant::now();
                p.commit(&consumer);
            }
        }
    }

    info!("shutting down: draining buffers and committing");
    {
        let mut p = lock(&pipeline);
        let changes = p.flush_due(true);
        if !changes.pause.is_empty() {
            error!(
                partitions = changes.pause.len(),
                "some buffers could not be flushed; they will be replayed"
            );
        }
        p.commit(&consumer);
    }
    consumer.unsubscribe();
    // Let the revoke callback run (it commits again, harmlessly) before the consumer closes.
    let _ = consumer.poll(Duration::from_millis(100));
    drop(consumer);
    health.set_not_ready("stopped");
    let report = IngestReport {
        events: stats.events.load(Ordering::Relaxed),
        dead_letters: stats.dead_letters.load(Ordering::Relaxed),
        segments: stats.segments.load(Ordering::Relaxed),
    };
    info!(
        events = report.events,
        dead_letters = report.dead_letters,
        segments = report.segments,
        "ingest stopped"
    );
    Ok(report)
}
