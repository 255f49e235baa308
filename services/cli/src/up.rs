//! `quiver up`: the whole local pipeline with demo data, narrated.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use quiver_ingest::{IngestStats, Shutdown};
use quiver_telemetry::Health;

use crate::commands::{
    produce_options, progress_line, spawn_ingest, spawn_score, start_admin, stop_on_signal,
    stopped, topic_line,
};
use crate::{Context, UpArgs};

/// Attempts at the first model (10 s apart).
const FIRST_MODEL_ATTEMPTS: usize = 30;

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn score_line(s: &quiver_score::ScoreStats, since: Instant, model: &str) -> String {
    let predictions = s.predictions.load(Ordering::Relaxed);
    let latency = s
        .latency_percentiles()
        .map(|(p50, p99)| format!(", latency p50 {:.1} ms p99 {:.1} ms", p50 * 1e3, p99 * 1e3))
        .unwrap_or_default();
    format!(
        "{predictions} predictions ({:.0}/s){latency}, model {model}",
        predictions as f64 / since.elapsed().as_secs_f64().max(0.001)
    )
}

/// Builds a training set from the labels gathered so far, trains a logistic regression and
/// promotes it. Returns the model id and its test ROC AUC.
fn first_model(ctx: &Context, handle: tokio::runtime::Handle) -> anyhow::Result<(String, f64)> {
    let dir = ctx
        .config
        .store
        .dir
        .join("datasets")
        .join(chrono::Utc::now().format("%Y%m%dT%H%M%S").to_string());
    let options = quiver_batch::dataset::DatasetOptions::new("labels", dir.clone());
    quiver_batch::dataset::build(handle, &ctx.config, &ctx.catalog, &ctx.views, &options)?;
    let card = quiver_models::Registry::open(&ctx.config.store.dir)?.train_and_promote(&dir)?;
    Ok((card.id, card.test.roc_auc))
}

fn ingest_line(s: &IngestStats, since: Instant) -> String {
    let events = s.events.load(Ordering::Relaxed);
    let secs = since.elapsed().as_secs_f64().max(0.001);
    format!(
        "{events} events in the raw store ({:.0}/s), {} dead letters, {} segments, {:.1} MiB, {} commits",
        events as f64 / secs,
        s.dead_letters.load(Ordering::Relaxed),
        s.segments.load(Ordering::Relaxed),
        mb(s.bytes.load(Ordering::Relaxed)),
        s.commits.load(Ordering::Relaxed)
    )
}

pub(crate) async fn run(ctx: &Context, args: UpArgs) -> anyhow::Result<()> {
    let config = &ctx.config;
    let shutdown = Shutdown::default();
    stop_on_signal(shutdown.clone());

    println!(
        "[1/3] local stack: tansu on {}, redis at {}",
        config.first_broker(),
        config.redis.url
    );
    for topic in quiver_stack::up(config, &ctx.catalog, &ctx.views).await? {
        println!("      {}", topic_line(&topic));
    }

    let health = Health::default();
    let admin = start_admin(ctx, &health).await?;
    let stats = Arc::new(IngestStats::default());
    let started = Instant::now();
    let ingest = spawn_ingest(ctx, shutdown.clone(), health, stats.clone());
    println!(
        "[2/3] ingest: group `{}` → raw store {}, features → Redis + {}{}",
        config.ingest.group_id,
        config.store.dir.join("raw").display(),
        config.store.dir.join("offline").display(),
        admin
            .map(|a| format!(", metrics at http://{a}/metrics"))
            .unwrap_or_default()
    );

    let api = {
        let (config, views, shutdown) = (config.clone(), ctx.views.clone(), shutdown.clone());
        tokio::spawn(async move { quiver_serve::serve(&config, &views, stopped(shutdown)).await })
    };
    println!(
        "      API: http://{}/v1/features/user_txn/<user_id> (views: {})",
        config.api.listen,
        ctx.views
            .views
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let scored = Arc::new(quiver_score::ScoreStats::default());
    let stop_scorer = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scorer = spawn_score(ctx, stop_scorer.clone(), scored.clone());
    println!(
        "      scorer: group `{}` → topic {} + score store {} (waits for a first model)",
        config.score.group_id,
        config.kafka.topic(&config.score.predictions_topic),
        config.store.dir.join("scores").display()
    );
    // After a warm-up, the first model: training set from the labels so far, trained, promoted.
    let model = Arc::new(std::sync::Mutex::new(String::from("none yet")));
    let trainer = {
        let (ctx, model, shutdown) = (ctx.clone(), model.clone(), shutdown.clone());
        let warmup = Duration::from_secs(args.warmup_secs);
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            // Retried while labels are too few (e.g. no fraud yet); bounded so that
            // `--exit-when-done` always ends.
            for _ in 0..FIRST_MODEL_ATTEMPTS {
                if shutdown.is_triggered() {
                    return;
                }
                let (c, handle) = (ctx.clone(), tokio::runtime::Handle::current());
                match tokio::task::spawn_blocking(move || first_model(&c, handle)).await {
                    Ok(Ok((id, auc))) => {
                        println!(
                            "      model: trained and promoted {id} (test ROC AUC {auc:.4}); scoring live"
                        );
                        if let Ok(mut m) = model.lock() {
                            *m = format!("{id} (AUC {auc:.3})");
                        }
                        return;
                    }
                    Ok(Err(e)) => println!("      model: not yet ({e:#}); retrying in 10 s"),
                    Err(e) => println!("      model: training panicked ({e}); retrying in 10 s"),
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            println!(
                "      model: none trained; train one with `quiver dataset build` + `quiver train --promote`"
            );
        })
    };

    let options = produce_options(&args.demo);
    println!(
        "[3/3] demo producer: {} transactions at {}/s (seed {}), labels {} s later, {:.1}% malformed",
        if options.count == 0 {
            "unbounded".to_string()
        } else {
            options.count.to_string()
        },
        options.rate,
        options.seed,
        options.label_delay.as_secs_f64(),
        options.malformed_ratio * 100.0
    );
    let produced = Arc::new(AtomicU64::new(0));
    let producer = {
        let config = config.clone();
        let catalog = ctx.catalog.clone();
        let shutdown = shutdown.clone();
        let produced = produced.clone();
        let stats = stats.clone();
        let (scored, model) = (scored.clone(), model.clone());
        tokio::task::spawn_blocking(move || {
            quiver_demo::produce(
                &config,
                &catalog,
                &options,
                &|| shutdown.is_triggered(),
                &mut |p| {
                    produced.store(p.transactions + p.labels, Ordering::Relaxed);
                    let current = model.lock().map(|m| m.clone()).unwrap_or_default();
                    println!(
                        "      produced {} | ingested {} | {}",
                        progress_line(p),
                        ingest_line(&stats, started),
                        score_line(&scored, started, &current)
                    );
                },
            )
        })
    };
    let report = producer.await.context("producer thread panicked")?;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            shutdown.trigger();
            let _ = ingest.await;
            return Err(e.into());
        }
    };

    // Wait for ingest to catch up with everything produced.
    let total = report.progress.transactions + report.progress.labels;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !shutdown.is_triggered() && Instant::now() < deadline {
        let done =
            stats.events.load(Ordering::Relaxed) + stats.dead_letters.load(Ordering::Relaxed);
        if done >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if ingest.is_finished() {
            break;
        }
    }
    // And for the scorer (once the first model exists) to catch up.
    let _ = trainer.await;
    let scoreable = report.progress.transactions;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !shutdown.is_triggered() && Instant::now() < deadline {
        let done =
            scored.predictions.load(Ordering::Relaxed) + scored.malformed.load(Ordering::Relaxed);
        if done >= scoreable || scorer.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let current = model.lock().map(|m| m.clone()).unwrap_or_default();
    println!(
        "done: produced {total} events; {}; {}",
        ingest_line(&stats, started),
        score_line(&scored, started, &current)
    );
    println!(
        "      predictions: topic {} (JSON per transaction); `quiver sql \"SELECT decision, count(*) FROM scores GROUP BY 1\"`; `quiver models list`",
        config.kafka.topic(&config.score.predictions_topic)
    );
    println!(
        "      raw store: {} (Arrow IPC; e.g. `python3 -c \"import pyarrow.dataset as d; print(d.dataset('{}/transactions', format='arrow', partitioning='hive').to_table().num_rows)\"`)",
        config.store.dir.join("raw").display(),
        config.store.dir.join("raw").display()
    );
    println!(
        "      dead letters: topic {} (header quiver.reason says why)",
        config.kafka.dlq_topic("transactions")
    );
    if !args.exit_when_done && !shutdown.is_triggered() {
        println!(
            "pipeline keeps running (produce more with `quiver demo produce`); Ctrl-C to stop"
        );
    } else {
        shutdown.trigger();
    }
    stopped(shutdown.clone()).await;
    stop_scorer.store(true, Ordering::Relaxed);
    let result = ingest.await.context("ingest thread panicked")?;
    result?;
    scorer.await.context("scorer thread panicked")??;
    api.await.context("API task panicked")??;
    println!("stopped: {}", ingest_line(&stats, started));
    Ok(())
}
