//! `quiver up`: the whole local pipeline with demo data, narrated.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use quiver_ingest::{IngestStats, Shutdown};
use quiver_telemetry::Health;

use crate::commands::{
    produce_options, progress_line, spawn_ingest, start_admin, stop_on_signal, stopped, topic_line,
};
use crate::{Context, UpArgs};

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
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
        tokio::task::spawn_blocking(move || {
            quiver_demo::produce(
                &config,
                &catalog,
                &options,
                &|| shutdown.is_triggered(),
                &mut |p| {
                    produced.store(p.transactions + p.labels, Ordering::Relaxed);
                    println!(
                        "      produced {} | ingested {}",
                        progress_line(p),
                        ingest_line(&stats, started)
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
    println!(
        "done: produced {total} events; {}",
        ingest_line(&stats, started)
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
    let result = ingest.await.context("ingest thread panicked")?;
    result?;
    api.await.context("API task panicked")??;
    println!("stopped: {}", ingest_line(&stats, started));
    Ok(())
}
