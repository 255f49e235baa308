//! `quiver-loadtest latency`: event → prediction latency of the streaming worker at a fixed
//! event rate, against the broker's own produce → consume round trip measured in the same run.
//!
//! 1. a first model (trained on demo history ingested elsewhere) deployed, and the worker
//!    started as its own process (`quiver ingest`) on fresh topics, store and key prefix;
//! 2. broker round trip: messages produced at `--rate` to a fresh plain topic and consumed by a
//!    bare consumer; latency = consume instant − send instant;
//! 3. the same rate of transactions; latency = the instant the prediction is consumed from the
//!    predictions topic − the transaction's send instant.
//!
//! Each phase reports the CPU share of the broker, Redis, the worker and this process.

use std::collections::HashMap;
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

pub(crate) fn run(config_path: Option<&std::path::Path>, args: LatencyArgs) -> anyhow::Result<()> {
    let (config, run_id) = crate::fresh_config(config_path, "lat")?;
    let catalog = Catalog::load(&config.schemas.dir)?;
    let views = ViewCatalog::load(&config.schemas.dir, &catalog)?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut topics = quiver_stack::declared_topics(&config, &catalog);
    let rtt_topic = config.kafka.topic("rtt");
    topics.push((rtt_topic.clone(), 4));
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

    // 3. Event → prediction.
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
    worker.stop()?;

    let (r50, r99, rmax, rn) = percentiles(rtt);
    let (e50, e99, emax, en) = percentiles(e2e);
    println!(
        "| at {} events/s | messages | p50 (ms) | p99 (ms) | max (ms) | CPU (% of one core) |",
        args.rate
    );
    println!("|---|---:|---:|---:|---:|---|");
    println!("| broker produce → consume | {rn} | {r50:.2} | {r99:.2} | {rmax:.2} | {rtt_cpu} |");
    println!(
        "| event → prediction (quiver ingest) | {en} | {e50:.2} | {e99:.2} | {emax:.2} | {e2e_cpu} |"
    );
    println!(
        "\np99 ratio (prediction / broker): {:.2} (target ≤ 2.5); p50: {e50:.2} ms against 2 × {r50:.2} + 2 = {:.2} ms",
        e99 / r99,
        2.0 * r50 + 2.0
    );
    let _ = std::fs::remove_dir_all(&config.store.dir);
    Ok(())
}
