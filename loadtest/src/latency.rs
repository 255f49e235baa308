//! `quiver-loadtest latency`: event → prediction latency of the streaming worker at a fixed
//! event rate, against the broker's own produce → consume round trip measured in the same run.
//!
//! 1. a first model (trained on demo history ingested elsewhere) deployed, and the worker
//!    started as its own process (`quiver ingest`) on fresh topics, store and key prefix;
//! 2. broker round trip: messages produced at `--rate` to a fresh plain topic and consumed by a
//!    bare consumer; latency = consume instant − send instant;
//! 3. the broker's own two hops: a bare relay (a consumer that re-produces each message at
//!    once) between two fresh topics; latency = consume
//!    instant at the second topic − send instant at the first. An event → prediction trip is two
//!    hops through the broker, so this is the floor the worker adds to;
//! 4. the same rate of transactions; latency = the instant the prediction is consumed from the
//!    predictions topic − the transaction's send instant.
//!
//! Each phase reports the CPU share of the broker, Redis, the worker and this process, and drops
//! its consumers when it ends (an idle consumer still costs tansu a fetch every 10 ms).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use quiver_core::{Catalog, Config};
use quiver_demo::{Generator, GeneratorOptions};
use quiver_features::ViewCatalog;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use crate::procs::{CpuMeter, WorkerProcess};

/// Options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LatencyArgs {
    /// Events per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Measure the event → prediction phase again with the live monitor (`quiver monitor run`)
    /// reading the predictions, and its CPU against the worker's.
    #[arg(long)]
    monitor: bool,
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64, usize) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, 0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(1.0), v.len())
}

/// A consumer that has joined its group and read everything already in `topic`, so the
/// measurement starts with it waiting at the end.
fn consumer(config: &Config, topic: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    let c: BaseConsumer = quiver_kafka::client_config(&config.kafka)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    c.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(_) => quiet_since = Instant::now(),
            None => {
                let assigned = c.assignment().map(|a| a.count() > 0).unwrap_or(false);
                if assigned && quiet_since.elapsed() > Duration::from_secs(2) {
                    return Ok(c);
                }
            }
        }
    }
    bail!("consumer of {topic} did not join its group")
}

/// Sends `count` messages at `rate` with keys/payloads from `next`, while `drain` consumes;
/// returns the latencies (ms) of messages matched by id.
fn paced(
    config: &Config,
    topic: &str,
    out: &BaseConsumer,
    rate: u64,
    seconds: u64,
    mut next: impl FnMut(u64) -> (String, String, String),
    id_of: impl Fn(&[u8]) -> Option<String>,
) -> anyhow::Result<Vec<f64>> {
    // librdkafka's default linger (5 ms), for the broker measurement and the events alike.
    let producer: ThreadedProducer<_> = quiver_kafka::producer_config(&config.kafka)
        .set("linger.ms", "5")
        .create()?;
    let count = rate * seconds;
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(count as usize);
    let mut latencies = Vec::with_capacity(count as usize);
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut i = 0;
    let deadline = start + Duration::from_secs(seconds + 30);
    while (i < count || latencies.len() < sent.len()) && Instant::now() < deadline {
        while i < count && Instant::now() >= start + interval.mul_f64(i as f64) {
            let (id, key, payload) = next(i);
            sent.insert(id, Instant::now());
            if let Err((e, _)) = producer.send(BaseRecord::to(topic).key(&key).payload(&payload)) {
                bail!("produce: {e}");
            }
            i += 1;
        }
        while let Some(Ok(m)) = out.poll(Duration::ZERO) {
            if let Some(at) = m.payload().and_then(&id_of).and_then(|id| sent.get(&id)) {
                latencies.push(at.elapsed().as_secs_f64() * 1e3);
            }
        }
        // Until the next send is due (at most 1 ms: keep draining the consumer).
        let due = start + interval.mul_f64(i as f64);
        std::thread::sleep(
            due.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(1)),
        );
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(latencies)
}

/// Re-produces every message of `from` to `to` until `stop`: the lightest relay (the worker's
/// 1 ms linger and 10 ms poll, without idempotence: against tansu an idempotent relay alone
/// showed ~1 s stalls, p99 800 ms at 1 000/s, which the worker does not).
fn relay(
    config: &Config,
    from: BaseConsumer,
    to: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let producer: ThreadedProducer<_> = quiver_kafka::producer_config(&config.kafka)
        .set("linger.ms", "1")
        .create()?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = from.poll(Duration::from_millis(10)) {
                let key = m.key().unwrap_or_default();
                let payload = m.payload().unwrap_or_default();
                let record = BaseRecord::to(&to).key(key).payload(payload);
                if let Err((e, _)) = producer.send(record) {
                    eprintln!("relay: produce failed: {e}");
                }
            }
        }
        let _ = producer.flush(Duration::from_secs(10));
    }))
}

/// A row of the results table.
fn row(name: &str, latencies: Vec<f64>, cpu: &str) -> (f64, f64) {
    let (p50, p99, max, n) = percentiles(latencies);
    println!("| {name} | {n} | {p50:.2} | {p99:.2} | {max:.2} | {cpu} |");
    (p50, p99)
}

pub(crate) fn run(config_path: Option<&std::path::Path>, args: LatencyArgs) -> anyhow::Result<()> {
    let (config, run_id) = crate::fresh_config(config_path, "lat")?;
    let catalog = Catalog::load(&config.schemas.dir)?;
    let views = ViewCatalog::load(&config.schemas.dir, &catalog)?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut topics = quiver_stack::declared_topics(&config, &catalog);
    let rtt_topic = config.kafka.topic("rtt");
    let hop1 = config.kafka.topic("relay.in");
    let hop2 = config.kafka.topic("relay.out");
    for t in [&rtt_topic, &hop1, &hop2] {
        topics.push((t.clone(), 4));
    }
    rt.block_on(quiver_kafka::create_topics(&config.kafka, &topics))?;

    // 1. A model deployed before the first event; the worker as its own process.
    crate::model::deploy_first_model(&config, &catalog, &views, &rt)?;
    std::fs::create_dir_all(&config.store.dir)?;
    let log = config.store.dir.join("worker.log");
    let worker = WorkerProcess::start(&config, &[], &log)?;
    let joined = Instant::now();
    while worker.metric("quiver_ingest_assigned_partitions") < 1.0 {
        if joined.elapsed() > Duration::from_secs(60) {
            bail!("the worker did not join its group (log: {})", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let predictions = consumer(
        &config,
        &config.kafka.topic(&config.score.predictions_topic),
        &format!("lat-{run_id}-pred"),
    )?;
    let mut generator = Generator::new(4, GeneratorOptions::default());
    let topic = config.kafka.topic("transactions");
    let mut next = |_| {
        let t = generator.next_transaction(chrono::Utc::now());
        (t.txn_id.clone(), t.user_id.clone(), t.to_json())
    };
    let id_of = |p: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(p)
            .ok()
            .and_then(|v| v["txn_id"].as_str().map(String::from))
    };
    // A short warm-up at the rate (connections, caches, the first flushes).
    eprintln!("warm-up: 2 s at {}/s ...", args.rate);
    paced(
        &config,
        &topic,
        &predictions,
        args.rate,
        2,
        &mut next,
        id_of,
    )?;

    // 2. The broker's own round trip, on a fresh topic, the worker idle beside it.
    eprintln!(
        "broker produce → consume at {}/s for {} s ...",
        args.rate, args.seconds
    );
    let rtt_consumer = consumer(&config, &rtt_topic, &format!("lat-{run_id}-rtt"))?;
    let meter = CpuMeter::start(Some(worker.pid()));
    let rtt = paced(
        &config,
        &rtt_topic,
        &rtt_consumer,
        args.rate,
        args.seconds,
        |i| (format!("r{i}"), format!("k{}", i % 64), format!("r{i}")),
        |p| std::str::from_utf8(p).ok().map(String::from),
    )?;
    let rtt_cpu = meter.line();
    drop(rtt_consumer);

    // 3. Two hops through the broker with nothing but a relay between them.
    eprintln!(
        "broker two hops (bare relay) at {}/s for {} s ...",
        args.rate, args.seconds
    );
    let relay_in = consumer(&config, &hop1, &format!("lat-{run_id}-relay"))?;
    let relay_out = consumer(&config, &hop2, &format!("lat-{run_id}-relay-out"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let relaying = relay(&config, relay_in, hop2.clone(), Arc::clone(&stop))?;
    let meter = CpuMeter::start(Some(worker.pid()));
    let two_hops = paced(
        &config,
        &hop1,
        &relay_out,
        args.rate,
        args.seconds,
        |i| (format!("h{i}"), format!("k{}", i % 64), format!("h{i}")),
        |p| std::str::from_utf8(p).ok().map(String::from),
    );
    let relay_cpu = meter.line();
    stop.store(true, Ordering::Relaxed);
    let _ = relaying.join();
    drop(relay_out);
    let two_hops = two_hops?;

    // 4. Event → prediction.
    eprintln!(
        "event → prediction at {}/s for {} s ...",
        args.rate, args.seconds
    );
    let meter = CpuMeter::start(Some(worker.pid()));
    let e2e = paced(
        &config,
        &topic,
        &predictions,
        args.rate,
        args.seconds,
        &mut next,
        id_of,
    )?;
    let e2e_cpu = meter.line();
    let watched = if args.monitor {
        Some(with_monitor(
            &config,
            &worker,
            &topic,
            &predictions,
            &args,
            &mut next,
            id_of,
        )?)
    } else {
        None
    };
    worker.stop()?;

    println!(
        "| at {} events/s | messages | p50 (ms) | p99 (ms) | max (ms) | CPU (% of one core) |",
        args.rate
    );
    println!("|---|---:|---:|---:|---:|---|");
    let (r50, r99) = row("broker produce → consume", rtt, &rtt_cpu);
    let (h50, h99) = row("broker two hops (bare relay)", two_hops, &relay_cpu);
    let (e50, e99) = row("event → prediction (quiver ingest)", e2e, &e2e_cpu);
    if let Some((latencies, cpu, _)) = &watched {
        row(
            "event → prediction, live monitor running",
            latencies.clone(),
            cpu,
        );
    }
    println!(
        "\np99 ratio (prediction / broker): {:.2} (target ≤ 2.5); p50: {e50:.2} ms against 2 × {r50:.2} + 2 = {:.2} ms",
        e99 / r99,
        2.0 * r50 + 2.0
    );
    println!(
        "two hops with nothing between them: p99 {:.2} × the broker's, p50 {h50:.2} ms; the worker adds p50 {:+.2} ms, p99 {:+.2} ms to them",
        h99 / r99,
        e50 - h50,
        e99 - h99
    );
    if let Some((_, _, summary)) = watched {
        println!("{summary}");
    }
    let _ = std::fs::remove_dir_all(&config.store.dir);
    Ok(())
}

/// The event → prediction phase again with `quiver monitor run` reading the predictions and
/// labels: its latencies, the CPU line, and the monitor's cost against the worker's CPU.
fn with_monitor(
    config: &Config,
    worker: &WorkerProcess,
    topic: &str,
    predictions: &BaseConsumer,
    args: &LatencyArgs,
    next: &mut impl FnMut(u64) -> (String, String, String),
    id_of: impl Fn(&[u8]) -> Option<String>,
) -> anyhow::Result<(Vec<f64>, String, String)> {
    eprintln!(
        "event → prediction with the live monitor at {}/s for {} s ...",
        args.rate, args.seconds
    );
    let log = config.store.dir.join("monitor.log");
    // The default window (10 min); evaluated every 10 s (the default is 30 s) so that a phase
    // of 20–30 s sees a few evaluations.
    let extra = [("QUIVER__MONITOR__INTERVAL", "10s".to_string())];
    let monitor = WorkerProcess::start_monitor(config, &extra, &log)?;
    // Measured from when it has read the window's backlog (the earlier phases' predictions):
    // its cost while it keeps up, not its catch-up.
    let started = Instant::now();
    while monitor.metric("quiver_ready") < 1.0 {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the monitor did not catch up (log: {})", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "  monitor caught up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let meter = CpuMeter::start_with(Some(worker.pid()), Some(monitor.pid()));
    let e2e = paced(
        config,
        topic,
        predictions,
        args.rate,
        args.seconds,
        next,
        id_of,
    )?;
    let shares = meter.shares();
    let cpu = meter.line();
    let read = monitor.metric("quiver_monitor_rows_total");
    monitor.stop()?;
    let share = |name: &str| {
        shares
            .iter()
            .find(|(n, _)| n.starts_with(name))
            .map_or(0.0, |(_, s)| *s)
    };
    let (w, m) = (share("worker"), share("monitor"));
    let summary = format!(
        "live monitor: {m:.1} % of a core against the worker's {w:.1} % ({:.1} % of the worker's CPU), {read:.0} rows read",
        100.0 * m / w.max(1e-9)
    );
    Ok((e2e, cpu, summary))
}
