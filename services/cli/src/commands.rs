//! `quiver ingest`, `quiver demo produce`, `quiver stack ...`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use quiver_demo::{GeneratorOptions, ProduceOptions, ProduceProgress};
use quiver_ingest::{IngestStats, Shutdown};
use quiver_kafka::TopicOutcome;
use quiver_telemetry::Health;
use tracing::info;

use crate::{Context, ProduceArgs, StackCommand};

/// Triggers `shutdown` on Ctrl-C or SIGTERM.
pub(crate) fn stop_on_signal(shutdown: Shutdown) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C still works");
                        let _ = ctrl_c.await;
                        shutdown.trigger();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        info!("stop requested; draining");
        shutdown.trigger();
    });
}

/// Starts an admin listener (`/metrics`, `/healthz`, `/readyz`) on `listen` unless it is empty
/// (the worker's `ingest.admin_listen`, the monitor's `monitor.admin_listen`); its address.
pub(crate) async fn start_admin(listen: &str, health: &Health) -> anyhow::Result<Option<String>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let metrics = quiver_telemetry::metrics_handle();
    quiver_telemetry::serve_admin(listen, metrics, health.clone()).await?;
    Ok(Some(listen.to_string()))
}

/// Runs the ingest service on a blocking thread.
pub(crate) fn spawn_ingest(
    ctx: &Context,
    shutdown: Shutdown,
    health: Health,
    stats: Arc<IngestStats>,
) -> tokio::task::JoinHandle<quiver_ingest::Result<quiver_ingest::IngestReport>> {
    let config = ctx.config.clone();
    let catalog = ctx.catalog.clone();
    let views = ctx.views.clone();
    tokio::task::spawn_blocking(move || {
        quiver_ingest::run(&config, &catalog, &views, shutdown, health, stats)
    })
}

pub(crate) async fn ingest(ctx: &Context) -> anyhow::Result<()> {
    let shutdown = Shutdown::default();
    stop_on_signal(shutdown.clone());
    let health = Health::of("worker");
    if let Some(addr) = start_admin(&ctx.config.ingest.admin_listen, &health).await? {
        info!(%addr, "admin listener: /metrics /healthz /readyz");
    }
    let stats = Arc::new(IngestStats::default());
    spawn_ingest(ctx, shutdown, health, stats)
        .await
        .context("ingest thread panicked")??;
    Ok(())
}

/// Resolves when `shutdown` is triggered.
pub(crate) async fn stopped(shutdown: Shutdown) {
    while !shutdown.is_triggered() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn serve(ctx: &Context) -> anyhow::Result<()> {
    let shutdown = Shutdown::default();
    stop_on_signal(shutdown.clone());
    quiver_serve::serve(&ctx.config, &ctx.views, stopped(shutdown)).await?;
    Ok(())
}

pub(crate) fn produce_options(args: &ProduceArgs) -> anyhow::Result<ProduceOptions> {
    let clock = match args.time_lapse {
        None => quiver_demo::EventClock::Wall,
        Some(_) if args.count == 0 => {
            anyhow::bail!("--time-lapse needs --count: the last transaction is dated now")
        }
        Some(step_ms) => {
            let span = i64::try_from(step_ms.saturating_mul(args.count))
                .context("--time-lapse × --count is too long")?;
            quiver_demo::EventClock::Lapse {
                anchor: chrono::Utc::now() - chrono::Duration::milliseconds(span),
                step_ms: i64::try_from(step_ms).context("--time-lapse is too long")?,
                first: 0,
            }
        }
    };
    Ok(ProduceOptions {
        rate: args.rate,
        count: args.count,
        seed: args.seed,
        label_delay: Duration::from_secs_f64(args.label_delay.max(0.0)),
        malformed_ratio: args.malformed.clamp(0.0, 1.0),
        generator: GeneratorOptions {
            users: args.users.max(1),
            shift_after: args.shift_after.map(|s| s.events(args.rate)),
            ..GeneratorOptions::default()
        },
        clock,
        skip: 0,
    })
}

pub(crate) fn progress_line(p: &ProduceProgress) -> String {
    let total = if p.count == 0 {
        String::new()
    } else {
        format!("/{}", p.count)
    };
    let rate = if p.elapsed > 0.0 {
        p.transactions as f64 / p.elapsed
    } else {
        0.0
    };
    format!(
        "{}{total} transactions ({rate:.0}/s), {} labels, {} malformed, {} fraud",
        p.transactions, p.labels, p.malformed, p.fraud
    )
}

pub(crate) async fn produce(ctx: &Context, args: ProduceArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::default();
    stop_on_signal(shutdown.clone());
    let options = produce_options(&args)?;
    let config = ctx.config.clone();
    let catalog = ctx.catalog.clone();
    let report = tokio::task::spawn_blocking(move || {
        quiver_demo::produce(
            &config,
            &catalog,
            &options,
            &|| shutdown.is_triggered(),
            &mut |p| {
                eprintln!("demo: {}", progress_line(p));
            },
        )
    })
    .await
    .context("producer thread panicked")??;
    if report.labels_dropped > 0 {
        eprintln!(
            "demo: stopped early; {} labels not yet due were not sent",
            report.labels_dropped
        );
    }
    Ok(())
}

/// `topic NAME (N partitions): created|exists[, notice]`.
pub(crate) fn topic_line(t: &quiver_stack::TopicStatus) -> String {
    let what = if t.outcome == TopicOutcome::Created {
        "created"
    } else {
        "exists"
    };
    let moved = t
        .moved_stale_store
        .as_ref()
        .map(|p| {
            format!(
                "; raw segments of its previous incarnation moved to {}",
                p.display()
            )
        })
        .unwrap_or_default();
    let cleared = if t.cleared_views.is_empty() {
        String::new()
    } else {
        format!(
            "; online state and feature logs of {} reset",
            t.cleared_views.join(", ")
        )
    };
    format!(
        "topic {} ({} partitions): {what}{moved}{cleared}",
        t.name, t.partitions
    )
}

/// `quiver topics create`: the declared topics on the configured brokers.
pub(crate) async fn topics(ctx: &Context) -> anyhow::Result<()> {
    for topic in quiver_stack::create_topics(&ctx.config, &ctx.catalog, &ctx.views).await? {
        eprintln!("topics: {}", topic_line(&topic));
    }
    Ok(())
}

pub(crate) async fn stack(ctx: &Context, cmd: StackCommand) -> anyhow::Result<()> {
    match cmd {
        StackCommand::Up => {
            for topic in quiver_stack::up(&ctx.config, &ctx.catalog, &ctx.views).await? {
                eprintln!("stack: {}", topic_line(&topic));
            }
            Ok(())
        }
        StackCommand::Down => Ok(quiver_stack::LocalStack::from_config(&ctx.config)?.run("down")?),
        StackCommand::Status => {
            Ok(quiver_stack::LocalStack::from_config(&ctx.config)?.run("status")?)
        }
    }
}

pub(crate) async fn sql(
    ctx: &Context,
    query: &str,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let stores = quiver_batch::open(&ctx.config, &ctx.catalog, &ctx.views).await?;
    if !stores.empty.is_empty() {
        eprintln!("sql: no data yet for {}", stores.empty.join(", "));
    }
    let frame = stores.sql(query).await?;
    match out {
        Some(path) => {
            quiver_batch::write(frame, path).await?;
            eprintln!("sql: wrote {}", path.display());
        }
        None => {
            let batches = quiver_batch::collect(frame).await?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            println!("{}", quiver_batch::pretty(&batches)?);
            eprintln!("sql: {rows} row(s)");
        }
    }
    Ok(())
}
