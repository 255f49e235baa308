//! `quiver-loadtest ingest`: how fast `quiver ingest` moves a topic into the raw store, against
//! how fast a bare librdkafka consumer drains the same topic, in the same run.
//!
//! 1. produce `--events` demo transactions to a fresh topic (as fast as the broker takes them);
//! 2. drain it with a bare `BaseConsumer` that only counts messages (the limit);
//! 3. run the real ingest service (decode, validate, fsynced Arrow segments, commits) from a
//!    fresh group until every event is durable, and report events/s and the ratio.
//!
//! It needs a running broker (`quiver stack up`, or `--brokers`), and prints a Markdown row.
#![allow(clippy::print_stdout)]

mod api;
mod backfill;
mod latency;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
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
    /// Ingest throughput against a bare consumer.
    Ingest {
        /// Events to produce and ingest.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Seconds to wait for either consumer before giving up.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Ingest into the raw store only (no feature views, no Redis).
        #[arg(long)]
        no_features: bool,
        /// Reuse the topics of an earlier run (its `bench-<id>.` prefix) instead of producing.
        #[arg(long)]
        reuse_prefix: Option<String>,
    },
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

pub(crate) fn produce(config: &Config, topic: &str, events: u64) -> anyhow::Result<f64> {
    let producer: ThreadedProducer<_> = quiver_kafka::producer_config(&config.kafka)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    let mut generator = Generator::new(
        7,
        GeneratorOptions {
            users: 100_000,
            ..GeneratorOptions::default()
        },
    );
    let started = Instant::now();
    let base = chrono::Utc::now();
    for i in 0..events {
        let txn = generator.next_transaction(base + chrono::Duration::microseconds(i as i64 * 100));
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

fn bare_drain(config: &Config, topic: &str, events: u64, timeout: Duration) -> anyhow::Result<f64> {
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
    let (events, timeout, no_features, reuse_prefix) = match cli.command {
        Cmd::Ingest {
            events,
            timeout,
            no_features,
            reuse_prefix,
        } => (events, timeout, no_features, reuse_prefix),
        Cmd::Api {
            events,
            rate,
            seconds,
            connections,
        } => {
            return api::run(cli.config.as_deref(), events, rate, seconds, connections);
        }
        Cmd::Backfill(args) => return backfill::run(cli.config.as_deref(), args),
        Cmd::Latency(args) => return latency::run(cli.config.as_deref(), args),
        Cmd::BackfillChild { dir } => return backfill::child(cli.config.as_deref(), &dir),
    };
    let mut config = Config::load(cli.config.as_deref())?;
    let run_id = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    config.kafka.topic_prefix = reuse_prefix
        .clone()
        .unwrap_or_else(|| format!("bench-{run_id}."));
    config.ingest.group_id = format!("bench-{run_id}-ingest");
    config.ingest.admin_listen = String::new();
    config.store.dir = config.store.dir.join(format!("bench-{run_id}"));
    config.redis.key_prefix = format!("bench-{run_id}");
    let catalog = Catalog::load(&config.schemas.dir)?;
    let views = if no_features {
        ViewCatalog::default()
    } else {
        ViewCatalog::load(&config.schemas.dir, &catalog)?
    };
    let what = if no_features {
        "raw store only"
    } else {
        "raw store + features (tiles to Redis, feature log to Parquet)"
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(quiver_kafka::create_topics(
        &config.kafka,
        &quiver_stack::declared_topics(&config, &catalog),
    ))?;
    let topic = config.kafka.topic("transactions");
    let timeout = Duration::from_secs(timeout);

    let produce_rate = if reuse_prefix.is_some() {
        eprintln!("reusing {topic}");
        f64::NAN
    } else {
        eprintln!("producing {events} events to {topic} ...");
        let rate = produce(&config, &topic, events).context("produce")?;
        eprintln!("  produced at {rate:.0} events/s");
        rate
    };
    eprintln!("bare librdkafka consumer draining ...");
    let bare = bare_drain(&config, &topic, events, timeout).context("bare consumer")?;
    eprintln!("  {bare:.0} events/s");
    eprintln!("quiver ingest: {what} ...");
    let (rate, bytes) = ingest(&config, &catalog, &views, events, timeout).context("ingest")?;
    eprintln!("  {rate:.0} events/s");

    println!(
        "| ingest | events | produce (ev/s) | bare consumer (ev/s) | quiver ingest (ev/s) | ratio | raw store | peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {what} | {events} | {produce_rate:.0} | {bare:.0} | {rate:.0} | {:.0} % | {:.1} MiB | {:.0} MiB |",
        100.0 * rate / bare,
        bytes as f64 / 1_048_576.0,
        rss_peak_mib()
    );
    let _ = std::fs::remove_dir_all(&config.store.dir);
    Ok(())
}
