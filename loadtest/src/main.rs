//! `quiver-loadtest`: Quiver's benchmarks, each measured against a limit taken in the same run
//! (the broker's own round trip, a bare librdkafka consumer, bare Redis, DuckDB), on fresh
//! topics, stores and key prefixes, printing Markdown rows for `docs/benchmarks.md`.
//!
//! - `drain`: backlog drain by the streaming worker vs a bare consumer ([`drain`]);
//! - `latency`: event → prediction vs the broker's produce → consume ([`latency`]);
//! - `memory`: the worker's RSS against its state cache bound ([`memory`]);
//! - `api`: online reads vs bare `HGETALL` ([`api`]);
//! - `backfill`: the batch replay vs DuckDB ([`backfill`]).
//!
//! They need a running broker and Redis (`quiver stack up`, or `--config`), and the release
//! `quiver` binary next to this one for the benchmarks that run the worker as a process.
#![allow(clippy::print_stdout)]

mod api;
mod backfill;
mod drain;
mod latency;
mod memory;
mod model;
mod procs;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand};
use quiver_core::{Catalog, Config};
use quiver_demo::{Generator, GeneratorOptions};
use quiver_features::ViewCatalog;
use quiver_ingest::{IngestStats, Shutdown};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

#[derive(Debug, Parser)]
#[command(name = "quiver-loadtest")]
struct Cli {
    /// Config file (same layering as `quiver`).
    #[arg(long, global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The backfill on a generated raw store, against DuckDB on the same events.
    Backfill(backfill::BackfillArgs),
    /// Event → prediction latency against the broker's own round trip.
    Latency(latency::LatencyArgs),
    /// (internal) One backfill over `<dir>/store`, figures as JSON.
    #[command(hide = true)]
    BackfillChild {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Online read latency of `quiver serve` at a fixed request rate, against a bare Redis
    /// HGETALL of the same keys at the same rate.
    Api {
        /// Events to ingest first (with features) to populate the online store.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Requests per second (open loop).
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// Backlog drain by the streaming worker against a bare consumer.
    Drain(drain::DrainArgs),
    /// The worker's memory against its state cache bound.
    Memory(memory::MemoryArgs),
}

pub(crate) fn rss_peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// A configuration whose topics, group, store and key prefix are this run's own:
/// `<tag>-<UTC time>`.
pub(crate) fn fresh_config(
    config_path: Option<&std::path::Path>,
    tag: &str,
) -> anyhow::Result<(Config, String)> {
    let mut config = Config::load(config_path)?;
    let _ = quiver_telemetry::init_tracing(
        quiver_telemetry::LogFormat::Pretty,
        &config.telemetry.log_level,
    );
    let run_id = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    config.kafka.topic_prefix = format!("{tag}-{run_id}.");
    config.ingest.group_id = format!("{tag}-{run_id}-ingest");
    config.ingest.admin_listen = String::new();
    config.store.dir = config.store.dir.join(format!("{tag}-{run_id}"));
    config.redis.key_prefix = format!("{tag}-{run_id}");
    Ok((config, run_id))
}

/// The event time of `events` events 100 µs apart (how the load tests have always spaced them).
pub(crate) fn span_at_100_us(events: u64) -> Duration {
    Duration::from_micros(events.saturating_mul(100))
}

/// Produces `events` demo transactions over `users` users, as fast as the broker takes them.
/// Produces `events` demo transactions over `users` users, spaced evenly over `span` of event
/// time ending now (100 µs apart: 100 s per million events; 7 days: every window holds as many
/// tiles as in production). Returns the producer's rate.
pub(crate) fn produce(
    config: &Config,
    topic: &str,
    events: u64,
    users: u32,
    span: Duration,
) -> anyhow::Result<f64> {
    let producer: ThreadedProducer<_> = quiver_kafka::producer_config(&config.kafka)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    let mut generator = Generator::new(
        7,
        GeneratorOptions {
            users,
            ..GeneratorOptions::default()
        },
    );
    let started = Instant::now();
    let span_micros = i64::try_from(span.as_micros()).unwrap_or(i64::MAX);
    let step_micros = span_micros / i64::try_from(events.max(1)).unwrap_or(i64::MAX);
    let base = chrono::Utc::now() - chrono::Duration::microseconds(span_micros);
    for i in 0..events {
        let at = base + chrono::Duration::microseconds(i as i64 * step_micros);
        let txn = generator.next_transaction(at);
        let payload = txn.to_json();
        let mut record = BaseRecord::<str, str>::to(topic)
            .key(&txn.user_id)
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    std::thread::sleep(Duration::from_millis(1));
                    record = back;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

pub(crate) fn bare_drain(
    config: &Config,
    topic: &str,
    events: u64,
    timeout: Duration,
) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = quiver_kafka::client_config(&config.kafka)
        .set("group.id", format!("{topic}-bare"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + timeout;
    // Start the clock at the first message, so group-join time is not counted.
    let mut started = None;
    let mut seen = 0u64;
    while seen < events {
        if Instant::now() > deadline {
            bail!("bare consumer saw only {seen} of {events} events");
        }
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    let secs = started
        .map(|s| s.elapsed().as_secs_f64())
        .unwrap_or(f64::MAX);
    Ok(events as f64 / secs)
}

pub(crate) fn ingest(
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
    events: u64,
    timeout: Duration,
) -> anyhow::Result<(f64, u64)> {
    let shutdown = Shutdown::default();
    let stats = Arc::new(IngestStats::default());
    let handle = {
        let (config, catalog, views, shutdown, stats) = (
            config.clone(),
            catalog.clone(),
            views.clone(),
            shutdown.clone(),
            stats.clone(),
        );
        std::thread::spawn(move || {
            quiver_ingest::run(
                &config,
                &catalog,
                &views,
                shutdown,
                quiver_telemetry::Health::default(),
                stats,
            )
        })
    };
    let deadline = Instant::now() + timeout;
    let mut started = None;
    loop {
        let done = stats.events.load(Ordering::Relaxed);
        if done > 0 {
            started.get_or_insert_with(Instant::now);
        }
        if done >= events || Instant::now() > deadline || handle.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = started
        .map(|s| s.elapsed().as_secs_f64())
        .unwrap_or(f64::MAX);
    shutdown.trigger();
    let report = handle
        .join()
        .map_err(|_| anyhow::anyhow!("ingest panicked"))??;
    if report.events < events {
        bail!("ingest wrote only {} of {events} events", report.events);
    }
    Ok((events as f64 / secs, stats.bytes.load(Ordering::Relaxed)))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.config.as_deref();
    match cli.command {
        Cmd::Api {
            events,
            rate,
            seconds,
            connections,
        } => api::run(config, events, rate, seconds, connections),
        Cmd::Backfill(args) => backfill::run(config, args),
        Cmd::Latency(args) => latency::run(config, args),
        Cmd::Drain(args) => drain::run(config, args),
        Cmd::Memory(args) => memory::run(config, args),
        Cmd::BackfillChild { dir } => backfill::child(config, &dir),
    }
}
