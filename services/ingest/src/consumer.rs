//! The consumer-group member: client set-up, the callbacks librdkafka runs inside `poll`, and
//! the poll loop.
//!
//! The loop polls until the local queue is empty (or a batch is large), then runs the hot path
//! over what it polled and the bookkeeping of the durable path: flush completions, due cuts,
//! retries, commits, model reloads, cache eviction. The [`Worker`] sits behind a mutex the loop
//! never holds across `poll`, so the rebalance callback can take it: on revoke it drains and
//! commits the revoked partitions (or, when the assignment was lost, drops them without writing),
//! on assignment it reads where each new partition stands.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quiver_core::{Catalog, Config};
use quiver_features::ViewCatalog;
use quiver_online::OnlineStore;
use quiver_store::{SegmentStore, Table};
use quiver_telemetry::Health;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{info, warn};

use crate::delivery::Producer;
use crate::deploy::Models;
use crate::flusher::Flusher;
use crate::sources::BoundSource;
use crate::worker::{IngestReport, IngestStats, Parts, Shutdown, Worker};
use crate::{Error, Result, sources};

/// How long the loop waits for a message when nothing is buffered.
const TICK: Duration = Duration::from_millis(10);
/// Messages polled at most before the hot path runs.
const MAX_POLL: usize = 20_000;

/// The worker's consumer.
pub(crate) type WorkerConsumer = BaseConsumer<WorkerContext>;

/// The consumer's callbacks.
pub(crate) struct WorkerContext {
    worker: Arc<Mutex<Worker>>,
    health: Health,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave half-written segments (writes are atomic),
    // so the state is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ClientContext for WorkerContext {
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

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &WorkerConsumer, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                lock(&self.worker).revoke(consumer, tpl, consumer.assignment_lost());
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &WorkerConsumer, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            lock(&self.worker).assign(consumer, tpl);
        }
    }
}

/// Records each written view's definition in Redis on first start, and refuses to start when
/// the one recorded differs: the stored shards have another layout (see
/// [`Error::DefinitionChanged`] for the fix it names).
fn check_definitions(online: &mut OnlineStore, sources: &[BoundSource]) -> Result<()> {
    for view in sources.iter().flat_map(|s| &s.views) {
        let (name, current) = (&view.view().name, view.plan().fingerprint());
        match online.record_definition_once(name, current)? {
            Some(recorded) if recorded != current => {
                return Err(Error::DefinitionChanged {
                    view: name.clone(),
                    recorded,
                    current,
                });
            }
            Some(_) => {}
            None => {
                info!(view = %name, definition = %format!("{current:016x}"), "view definition recorded")
            }
        }
    }
    Ok(())
}

/// Runs the worker until `shutdown` is triggered; blocking (give it its own thread).
///
/// Fails fast with one clear error if the broker or Redis is unreachable or topics are
/// missing.
pub fn run(
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
    shutdown: Shutdown,
    health: Health,
    stats: Arc<IngestStats>,
) -> Result<IngestReport> {
    let sources = sources::bind(config, catalog, views)?;
    crate::events::view_hops(views);
    let redis = || {
        OnlineStore::connect(
            &config.redis.url,
            &config.redis.key_prefix,
            Duration::from_millis(config.redis.connect_timeout_ms),
            Duration::from_millis(config.redis.command_timeout_ms),
        )
        .map_err(|source| Error::Unreachable {
            url: quiver_core::config::redacted_url(&config.redis.url),
            source,
        })
    };
    let mut online = redis()?;
    check_definitions(&mut online, &sources)?;
    let parts = Parts {
        sources,
        online,
        producer: Producer::new(config, Arc::clone(&stats))?,
        flusher: Flusher::start(&config.store.dir, redis()?)?,
        raw: SegmentStore::open(&config.store.dir, Table::Raw)?,
        models: Models::open(
            &config.store.dir,
            Duration::from_millis(config.score.reload_interval_ms),
        )?,
    };
    let worker = Arc::new(Mutex::new(Worker::new(config, parts, Arc::clone(&stats))));
    let (topics, needed) = {
        let w = lock(&worker);
        (w.topics(), w.needed_topics())
    };
    quiver_kafka::require_topics(&config.kafka, &needed)?;

    let context = WorkerContext {
        worker: Arc::clone(&worker),
        health: health.clone(),
    };
    let consumer: WorkerConsumer = quiver_kafka::client_config(&config.kafka)
        .set("group.id", &config.ingest.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(context)
        .map_err(|source| Error::Client {
            context: "create consumer",
            source,
        })?;
    for topic in &topics {
        if let Ok(metadata) = consumer.fetch_metadata(
            Some(topic),
            Duration::from_millis(config.kafka.connect_timeout_ms),
        ) && let Some(t) = metadata.topics().first()
        {
            lock(&worker).set_partition_count(topic, t.partitions().len());
        }
    }
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).map_err(|source| Error::Client {
        context: "subscribe",
        source,
    })?;
    info!(topics = %topics.join(","), group = %config.ingest.group_id, store = %config.store.dir.display(), "worker started");
    health.set_ready();

    while !shutdown.is_triggered() {
        poll(&consumer, &worker);
        let mut w = lock(&worker);
        w.hot();
        w.producer.resend_refused();
        w.pause_failed(&consumer);
        w.completions();
        w.cut_due();
        w.retry_due(&consumer);
        w.pause_failed(&consumer);
        w.commit_due(&consumer);
        w.models.refresh();
        w.publish_model();
        w.evict();
        match w.unready() {
            Some(reason) => health.set_not_ready(reason),
            None if !health.is_ready() => health.set_ready(),
            None => {}
        }
    }

    info!("shutting down: draining and committing");
    lock(&worker).drain_all(&consumer);
    consumer.unsubscribe();
    // Let the revoke callback run (it finds nothing left) before the consumer closes.
    let _ = consumer.poll(Duration::from_millis(100));
    drop(consumer);
    health.set_not_ready("stopped");
    let report = stats.report();
    info!(
        events = report.events,
        dead_letters = report.dead_letters,
        segments = report.segments,
        "worker stopped"
    );
    Ok(report)
}

/// Polls until the local queue is empty or [`MAX_POLL`] messages were taken, waiting up to
/// [`TICK`] for the first one.
fn poll(consumer: &WorkerConsumer, worker: &Mutex<Worker>) {
    let mut wait = TICK;
    for _ in 0..MAX_POLL {
        match consumer.poll(wait) {
            Some(Ok(m)) => {
                lock(worker).accept(
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    m.timestamp().to_millis(),
                    m.key(),
                    m.payload(),
                );
                wait = Duration::ZERO;
            }
            Some(Err(error)) => {
                warn!(%error, "consumer error");
                return;
            }
            None => return,
        }
    }
}
