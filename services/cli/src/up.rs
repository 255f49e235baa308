//! `quiver up`: the whole local pipeline with demo data, narrated.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use quiver_ingest::{IngestStats, Shutdown};
use quiver_telemetry::Health;

use crate::commands::{
    produce_options, progress_line, spawn_ingest, start_admin, stop_on_signal, stopped, topic_line,
};
use crate::{Context, UpArgs};

/// Attempts at the first model (10 s apart).
const FIRST_MODEL_ATTEMPTS: usize = 30;

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn score_line(s: &IngestStats, since: Instant, model: &str) -> String {
    let predictions = s.predictions.load(Ordering::Relaxed);
    let latency = s
        .latency_percentiles()
        .map(|(p50, p99)| format!(", latency p50 {:.1} ms p99 {:.1} ms", p50 * 1e3, p99 * 1e3))
        .unwrap_or_default();
    format!(
        "{predictions} predictions ({:.0}/s){latency}, {} events before a model, model {model}",
        predictions as f64 / since.elapsed().as_secs_f64().max(0.001),
        s.unscored.load(Ordering::Relaxed)
    )
}

/// Builds a training set from the labels gathered so far, trains a logistic regression and
/// promotes it. Returns the model id and its test ROC AUC.
fn first_model(
    ctx: &Context,
    handle: tokio::runtime::Handle,
    (latest, until): (Option<usize>, i64),
) -> anyhow::Result<(String, f64)> {
    let dir = ctx
        .config
        .store
        .dir
        .join("datasets")
        .join(chrono::Utc::now().format("%Y%m%dT%H%M%S").to_string());
    // The vectors the worker scored the warm-up with: what the model will meet in production
    // (a merchant's vector reads other partitions' shards as they were then, which a
    // recomputation from the raw store cannot know; at `--time-lapse` a second of lag is hours
    // of event time).
    let mut options = quiver_batch::dataset::DatasetOptions::new("labels", dir.clone());
    options.vectors = quiver_batch::dataset::Vectors::Logged;
    options.latest = latest;
    // The warm-up's labels only: live traffic runs while the model trains.
    options.until = Some(until);
    quiver_batch::dataset::build(handle, &ctx.config, &ctx.catalog, &ctx.views, &options)?;
    let card = quiver_models::Registry::open(&ctx.config.store.dir)?.train_and_promote(&dir)?;
    Ok((card.id, card.test.roc_auc))
}

/// Under a time-lapse, the warm-up events whose every sliding window had filled (their event
/// time at least the longest window after the first event): the first model learns from
/// those, as live traffic will look, not from a stream still filling its windows. `None`
/// (all of them) in real time or when too few remain.
fn filled(ctx: &Context, clock: &quiver_demo::EventClock, history: u64) -> Option<usize> {
    let quiver_demo::EventClock::Lapse { step_ms, .. } = clock else {
        return None;
    };
    let longest_us = ctx
        .views
        .views
        .iter()
        .flat_map(|v| &v.aggregations)
        .filter_map(|a| match a.window {
            quiver_features::Window::Sliding { size, .. } => Some(size),
            quiver_features::Window::Lifetime => None,
        })
        .max()?;
    let step = u64::try_from((*step_ms).max(1)).ok()?;
    let young = u64::try_from(longest_us / 1_000).ok()?.div_ceil(step);
    let filled = history.checked_sub(young)?;
    (filled >= MIN_FILLED)
        .then(|| usize::try_from(filled).ok())
        .flatten()
}

/// Fewer filled warm-up events than this and the first model learns from all of them.
const MIN_FILLED: u64 = 2_000;

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

/// Runs the demo producer on a blocking thread, printing a status line every second.
async fn demo(
    ctx: Context,
    options: quiver_demo::ProduceOptions,
    shutdown: Shutdown,
    stats: Arc<IngestStats>,
    started: Instant,
    model: Arc<std::sync::Mutex<String>>,
) -> anyhow::Result<quiver_demo::ProduceReport> {
    let (config, catalog) = (ctx.config.clone(), ctx.catalog.clone());
    let report = tokio::task::spawn_blocking(move || {
        quiver_demo::produce(
            &config,
            &catalog,
            &options,
            &|| shutdown.is_triggered(),
            &mut |p| {
                let current = model.lock().map(|m| m.clone()).unwrap_or_default();
                println!(
                    "      produced {} | ingested {} | {}",
                    progress_line(p),
                    ingest_line(&stats, started),
                    score_line(&stats, started, &current)
                );
            },
        )
    })
    .await
    .context("producer thread panicked")??;
    Ok(report)
}

/// Waits until the worker wrote `total` events (valid or dead letters), at most a minute.
async fn ingested(stats: &IngestStats, total: u64, shutdown: &Shutdown) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !shutdown.is_triggered() && Instant::now() < deadline {
        let done =
            stats.events.load(Ordering::Relaxed) + stats.dead_letters.load(Ordering::Relaxed);
        if done >= total {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Trains and promotes the first model from the labels gathered (`labels`: the latest how many,
/// up to which time), retrying (10 s apart) while they are too few; the model's description, or
/// `None`.
async fn train_first_model(
    ctx: &Context,
    shutdown: &Shutdown,
    labels: (Option<usize>, i64),
) -> Option<String> {
    for _ in 0..FIRST_MODEL_ATTEMPTS {
        if shutdown.is_triggered() {
            return None;
        }
        let (c, handle) = (ctx.clone(), tokio::runtime::Handle::current());
        match tokio::task::spawn_blocking(move || first_model(&c, handle, labels)).await {
            Ok(Ok((id, auc))) => {
                println!(
                    "      model: trained and promoted {id} (test ROC AUC {auc:.4}); every event from now on is scored"
                );
                return Some(format!("{id} (AUC {auc:.3})"));
            }
            Ok(Err(e)) => println!("      model: not yet ({e:#}); retrying in 10 s"),
            Err(e) => println!("      model: training panicked ({e}); retrying in 10 s"),
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    println!(
        "      model: none trained; train one with `quiver dataset build` + `quiver train --promote`"
    );
    None
}

pub(crate) async fn run(ctx: &Context, args: UpArgs) -> anyhow::Result<()> {
    let config = &ctx.config;
    let shutdown = Shutdown::default();
    stop_on_signal(shutdown.clone());

    println!(
        "[1/4] local stack: tansu on {}, redis at {}",
        config.first_broker(),
        quiver_core::config::redacted_url(&config.redis.url)
    );
    for topic in quiver_stack::up(config, &ctx.catalog, &ctx.views).await? {
        println!("      {}", topic_line(&topic));
    }

    let health = Health::of("worker");
    let admin = start_admin(&config.ingest.admin_listen, &health).await?;
    let stats = Arc::new(IngestStats::default());
    let started = Instant::now();
    let ingest = spawn_ingest(ctx, shutdown.clone(), health, stats.clone());
    println!(
        "[2/4] worker: group `{}` → raw store {}, features → Redis + {}, predictions → topic {} + {}{}",
        config.ingest.group_id,
        config.store.dir.join("raw").display(),
        config.store.dir.join("offline").display(),
        config.kafka.topic(&config.score.predictions_topic),
        config.store.dir.join("scores").display(),
        admin
            .map(|a| format!(", metrics at http://{a}/metrics"))
            .unwrap_or_default()
    );
    let monitor_health = Health::of("monitor");
    let monitor_admin = start_admin(&config.monitor.admin_listen, &monitor_health).await?;
    // The closed loop is on in the demo: a model that degrades is retrained, canaried and
    // promoted.
    let mut looped = ctx.clone();
    looped.config.monitor.retrain.enabled = true;
    looped.config.monitor.retrain.auto_promote = true;
    // Triggered by the realised AUC: a retrained model's baseline is its recent labelled
    // window, before and after the shift, which the inputs after it keep drifting from (the
    // first model's inputs drift only after the shift: it learns from logged vectors whose
    // windows had filled).
    looped.config.monitor.retrain.max_drift_share = 1.0;
    let monitor = crate::monitor::spawn_monitor(&looped, shutdown.clone(), monitor_health);
    println!(
        "      monitor: every {} over the last {}: drift, realised vs estimated AUC, latency, retraining when the model degrades{} and `quiver sql \"SELECT * FROM monitor\"`",
        config.monitor.interval,
        config.monitor.window,
        monitor_admin
            .map(|a| format!(" at http://{a}/metrics"))
            .unwrap_or_default()
    );
    let api = {
        let (config, views, shutdown) = (config.clone(), ctx.views.clone(), shutdown.clone());
        tokio::spawn(async move { quiver_serve::serve(&config, &views, stopped(shutdown)).await })
    };
    println!(
        "      API: http://{}/v1/features/user_txn/<user_id> (views: {}); status page: http://{}/",
        config.api.listen,
        ctx.views
            .views
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        config.api.listen
    );

    // Warm-up: the first transactions and their labels, then a first model trained on them.
    let live = produce_options(&args.demo)?;
    let warmup = (live.rate.max(1) * args.warmup_secs).max(1);
    let history = if live.count == 0 {
        warmup
    } else {
        warmup.min(live.count)
    };
    println!(
        "[3/4] warm-up: {history} transactions at {}/s (seed {}) and their labels ({} s later), then a first model",
        live.rate,
        live.seed,
        live.label_delay.as_secs_f64()
    );
    let model = Arc::new(std::sync::Mutex::new(String::from("none yet")));
    // The world changes (`--shift-after`) during the live traffic only.
    let warm = quiver_demo::ProduceOptions {
        count: history,
        generator: quiver_demo::GeneratorOptions {
            shift_after: None,
            ..live.generator.clone()
        },
        ..live.clone()
    };
    let mut produced = demo(
        ctx.clone(),
        warm,
        shutdown.clone(),
        stats.clone(),
        started,
        model.clone(),
    )
    .await
    .inspect_err(|_| shutdown.trigger())?
    .progress;
    ingested(&stats, produced.transactions + produced.labels, &shutdown).await;

    // Live: the rest of the demo, each transaction scored as it is ingested once the first
    // model (trained meanwhile) is picked up — the traffic does not pause for the training,
    // so the first predictions see the worker as it runs, not a caught-up one.
    let rest = if live.count == 0 {
        0
    } else {
        live.count.saturating_sub(history)
    };
    let live_traffic = if (rest > 0 || live.count == 0) && !shutdown.is_triggered() {
        println!(
            "[4/4] live: {} transactions at {}/s, {:.1}% malformed, each scored with the vector computed for it (from the first model on)",
            if rest == 0 {
                "unbounded".to_string()
            } else {
                rest.to_string()
            },
            live.rate,
            live.malformed_ratio * 100.0
        );
        // A time-lapse goes on from where the warm-up left it.
        let clock = match live.clock {
            quiver_demo::EventClock::Lapse {
                anchor, step_ms, ..
            } => quiver_demo::EventClock::Lapse {
                anchor,
                step_ms,
                first: history,
            },
            wall => wall,
        };
        // The same card holders go on paying: the warm-up's sequence continues (a second seed
        // would give every user id a new home country, amounts and favourite merchants, and
        // the inputs would drift against the warm-up's baseline with no shift at all).
        // `--shift-after` counts from here.
        let options = quiver_demo::ProduceOptions {
            count: rest,
            clock,
            skip: history,
            generator: quiver_demo::GeneratorOptions {
                shift_after: live
                    .generator
                    .shift_after
                    .map(|n| n.saturating_add(history)),
                ..live.generator.clone()
            },
            ..live.clone()
        };
        let (stop, task) = (
            shutdown.clone(),
            demo(
                ctx.clone(),
                options,
                shutdown.clone(),
                stats.clone(),
                started,
                model.clone(),
            ),
        );
        // A failing producer stops everything at once, not after the training.
        Some(tokio::spawn(async move {
            task.await.inspect_err(|_| stop.trigger())
        }))
    } else {
        None
    };
    let warmup_until = match live.clock {
        quiver_demo::EventClock::Lapse {
            anchor, step_ms, ..
        } => {
            let last = i64::try_from(history.saturating_sub(1)).unwrap_or(i64::MAX);
            anchor + chrono::Duration::milliseconds(step_ms.saturating_mul(last))
        }
        _ => chrono::Utc::now(),
    }
    .timestamp_micros();
    let first = (filled(ctx, &live.clock, history), warmup_until);
    if let Some(m) = train_first_model(ctx, &shutdown, first).await
        && let Ok(mut current) = model.lock()
    {
        *current = m;
    }
    if let Some(task) = live_traffic {
        let report = task
            .await
            .inspect_err(|_| shutdown.trigger())
            .context("the live traffic task failed")??
            .progress;
        produced.transactions += report.transactions;
        produced.labels += report.labels;
    }
    let total = produced.transactions + produced.labels;
    ingested(&stats, total, &shutdown).await;
    // And for the predictions of everything scored to be acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (u64::MAX, Instant::now());
    while !shutdown.is_triggered() && Instant::now() < deadline && !ingest.is_finished() {
        let now =
            stats.predictions.load(Ordering::Relaxed) + stats.unscored.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let current = model.lock().map(|m| m.clone()).unwrap_or_default();
    println!(
        "done: produced {total} events; {}; {}",
        ingest_line(&stats, started),
        score_line(&stats, started, &current)
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
    let result = ingest.await.context("worker thread panicked")?;
    result?;
    api.await.context("API task panicked")??;
    let watched = monitor.await.context("monitor thread panicked")??;
    println!(
        "monitor: {} predictions and {} labels read, {} evaluations (`quiver monitor report` for the window)",
        watched.predictions, watched.labels, watched.evaluations
    );
    println!("stopped: {}", ingest_line(&stats, started));
    Ok(())
}
