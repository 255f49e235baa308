//! `quiver-loadtest latency`: event → prediction latency of the scoring worker at a fixed event
//! rate, against the broker's own produce → consume round trip measured in the same run.
//!
//! 1. warm-up: demo transactions and labels → ingest → training set → a logistic regression,
//!    promoted (all in process, on a fresh topic prefix and store);
//! 2. broker round trip: messages produced at `--rate` to a plain topic and consumed by a bare
//!    consumer; latency = consume instant − send instant;
//! 3. the same rate of transactions with ingest and the scorer running; latency = the instant
//!    the prediction is consumed from the predictions topic − the transaction's send instant.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use quiver_core::{Catalog, Config};
use quiver_demo::{Generator, GeneratorOptions};
use quiver_features::ViewCatalog;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

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
    let mut config = Config::load(config_path)?;
    let _ = quiver_telemetry::init_tracing(
        quiver_telemetry::LogFormat::Pretty,
        &config.telemetry.log_level,
    );
    let run_id = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    config.kafka.topic_prefix = format!("lat-{run_id}.");
    config.ingest.group_id = format!("lat-{run_id}-ingest");
    config.score.group_id = format!("lat-{run_id}-score");
    config.ingest.admin_listen = String::new();
    config.store.dir = config.store.dir.join(format!("lat-{run_id}"));
    config.redis.key_prefix = format!("lat-{run_id}");
    let catalog = Catalog::load(&config.schemas.dir)?;
    let views = ViewCatalog::load(&config.schemas.dir, &catalog)?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut topics = quiver_stack::declared_topics(&config, &catalog);
    let rtt_topic = config.kafka.topic("rtt");
    topics.push((rtt_topic.clone(), 4));
    rt.block_on(quiver_kafka::create_topics(&config.kafka, &topics))?;

    // 1. Warm-up and a first model.
    eprintln!("warm-up: 20 000 transactions + labels, ingest, train ...");
    let mut generator = Generator::new(3, GeneratorOptions::default());
    let base = chrono::Utc::now() - chrono::Duration::minutes(30);
    let producer: ThreadedProducer<_> = quiver_kafka::producer_config(&config.kafka).create()?;
    for i in 0..20_000i64 {
        let t = generator.next_transaction(base + chrono::Duration::milliseconds(i * 50));
        let _ = producer.send(
            BaseRecord::to(&config.kafka.topic("transactions"))
                .key(&t.user_id)
                .payload(&t.to_json()),
        );
        let _ = producer.send(
            BaseRecord::to(&config.kafka.topic("labels"))
                .key(&t.user_id)
                .payload(&t.label_json(t.event_time)),
        );
    }
    producer.flush(Duration::from_secs(30))?;
    let shutdown = quiver_ingest::Shutdown::default();
    let ingest_stats = Arc::new(quiver_ingest::IngestStats::default());
    let ingest = {
        let (config, catalog, views, s, st) = (
            config.clone(),
            catalog.clone(),
            views.clone(),
            shutdown.clone(),
            ingest_stats.clone(),
        );
        std::thread::spawn(move || {
            quiver_ingest::run(
                &config,
                &catalog,
                &views,
                s,
                quiver_telemetry::Health::default(),
                st,
            )
        })
    };
    let warm = Instant::now();
    while ingest_stats.events.load(Ordering::Relaxed) < 40_000 {
        if warm.elapsed() > Duration::from_secs(120) {
            bail!("warm-up ingest did not finish");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let dir = config.store.dir.join("dataset");
    let options = quiver_batch::dataset::DatasetOptions::new("labels", dir.clone());
    {
        let (handle, config, catalog, views) = (
            rt.handle().clone(),
            config.clone(),
            catalog.clone(),
            views.clone(),
        );
        rt.block_on(async move {
            tokio::task::spawn_blocking(move || {
                quiver_batch::dataset::build(handle, &config, &catalog, &views, &options)
            })
            .await
        })??;
    }
    let card = quiver_models::Registry::open(&config.store.dir)?.train_and_promote(&dir)?;
    eprintln!(
        "  model {} (test ROC AUC {:.4})",
        card.id, card.test.roc_auc
    );

    // The scorer catches up with the warm-up before the measurement.
    let stop = Arc::new(AtomicBool::new(false));
    let score_stats = Arc::new(quiver_score::ScoreStats::default());
    let scorer = {
        let (config, catalog, views, s, st) = (
            config.clone(),
            catalog.clone(),
            views.clone(),
            stop.clone(),
            score_stats.clone(),
        );
        std::thread::spawn(move || quiver_score::run(&config, &catalog, &views, s, st))
    };
    let warm = Instant::now();
    while score_stats.predictions.load(Ordering::Relaxed) < 20_000 {
        if warm.elapsed() > Duration::from_secs(180) || scorer.is_finished() {
            bail!("the scorer did not catch up with the warm-up");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    eprintln!(
        "  the scorer caught up with the warm-up's 20 000 events in {:.1} s",
        warm.elapsed().as_secs_f64()
    );

    // 2. The broker's own round trip.
    eprintln!(
        "broker produce → consume at {}/s for {} s ...",
        args.rate, args.seconds
    );
    let rtt_consumer = consumer(&config, &rtt_topic, &format!("lat-{run_id}-rtt"))?;
    let rtt = paced(
        &config,
        &rtt_topic,
        &rtt_consumer,
        args.rate,
        args.seconds,
        |i| (format!("r{i}"), format!("k{}", i % 64), format!("r{i}")),
        |p| std::str::from_utf8(p).ok().map(String::from),
    )?;

    // 3. Event → prediction.
    eprintln!(
        "event → prediction at {}/s for {} s ...",
        args.rate, args.seconds
    );
    let predictions = consumer(
        &config,
        &config.kafka.topic(&config.score.predictions_topic),
        &format!("lat-{run_id}-pred"),
    )?;
    let mut generator = Generator::new(4, GeneratorOptions::default());
    let topic = config.kafka.topic("transactions");
    let e2e = paced(
        &config,
        &topic,
        &predictions,
        args.rate,
        args.seconds,
        |_| {
            let t = generator.next_transaction(chrono::Utc::now());
            (t.txn_id.clone(), t.user_id.clone(), t.to_json())
        },
        |p| {
            serde_json::from_slice::<serde_json::Value>(p)
                .ok()
                .and_then(|v| v["txn_id"].as_str().map(String::from))
        },
    )?;

    let scorer_side = score_stats.latency_percentiles();
    stop.store(true, Ordering::Relaxed);
    shutdown.trigger();
    scorer
        .join()
        .map_err(|_| anyhow::anyhow!("scorer panicked"))?
        .context("scorer")?;
    ingest
        .join()
        .map_err(|_| anyhow::anyhow!("ingest panicked"))?
        .context("ingest")?;

    let (r50, r99, rmax, rn) = percentiles(rtt);
    let (e50, e99, emax, en) = percentiles(e2e);
    println!(
        "| at {} events/s | messages | p50 (ms) | p99 (ms) | max (ms) |",
        args.rate
    );
    println!("|---|---:|---:|---:|---:|");
    println!("| broker produce → consume | {rn} | {r50:.2} | {r99:.2} | {rmax:.2} |");
    println!("| event → prediction (quiver score) | {en} | {e50:.2} | {e99:.2} | {emax:.2} |");
    println!("\np99 ratio (prediction / broker): {:.2}", e99 / r99);
    if let Some((p50, p99)) = scorer_side {
        println!(
            "scorer's own view (broker timestamp → prediction acknowledged), last 5 000: p50 {:.2} ms, p99 {:.2} ms",
            p50 * 1e3,
            p99 * 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&config.store.dir);
    Ok(())
}
