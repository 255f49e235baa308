//! `quiver-loadtest drain`: how fast the streaming worker drains a backlog — raw store, both
//! demo views (Redis + feature log), a prediction per event (claims, predictions topic, score
//! store), offsets committed — against a bare librdkafka consumer draining the same topic, in
//! the same run.
//!
//! 1. a first model deployed (unless `--no-scoring`);
//! 2. `--events` demo transactions produced to a fresh topic;
//! 3. a bare `BaseConsumer` that only counts messages drains it (the limit);
//! 4. `quiver ingest` as its own process drains it from a fresh group; its rate is taken from
//!    its first durable flush to the last event's prediction, with the CPU share of the
//!    broker, Redis and the worker over that time, and the worker's peak RSS.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use quiver_core::Catalog;
use quiver_features::ViewCatalog;

use crate::procs::{CpuMeter, WorkerProcess, rss_mib};

/// Options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DrainArgs {
    /// Events to produce and drain.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Seconds to wait for either consumer before giving up.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// No model deployed: raw store and features only.
    #[arg(long)]
    no_scoring: bool,
    /// No feature views (and no scoring): the raw store only.
    #[arg(long)]
    no_features: bool,
    /// Distinct users of the demo generator.
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Event time the events span, ending now, in seconds (default 7 days: the 24 h and 7 d
    /// windows hold as many tiles as in production; 100 per million events is how the drains
    /// before 2026-12-07 were run).
    #[arg(long, default_value_t = 7 * 86_400)]
    span_secs: u64,
}

pub(crate) fn run(config_path: Option<&std::path::Path>, args: DrainArgs) -> anyhow::Result<()> {
    let (mut config, _) = crate::fresh_config(config_path, "drain")?;
    let catalog = Catalog::load(&config.schemas.dir)?;
    std::fs::create_dir_all(&config.store.dir)?;
    if args.no_features {
        // A schemas dir with the sources and no views.
        let dir = config.store.dir.join("schemas-no-views");
        std::fs::create_dir_all(dir.join("sources"))?;
        for entry in std::fs::read_dir(config.schemas.dir.join("sources"))? {
            let entry = entry?;
            std::fs::copy(entry.path(), dir.join("sources").join(entry.file_name()))?;
        }
        config.schemas.dir = dir;
    }
    let views = ViewCatalog::load(&config.schemas.dir, &catalog)?;
    let scoring = !args.no_scoring && !args.no_features;
    let what = match (args.no_features, scoring) {
        (true, _) => "raw store only",
        (false, false) => "raw store + 2 views (Redis + feature log), no model",
        (false, true) => {
            "raw store + 2 views + a prediction per event (claims, topic, score store)"
        }
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(quiver_kafka::create_topics(
        &config.kafka,
        &quiver_stack::declared_topics(&config, &catalog),
    ))?;
    if scoring {
        crate::model::deploy_first_model(&config, &catalog, &views, &rt)?;
    }
    let topic = config.kafka.topic("transactions");
    let timeout = Duration::from_secs(args.timeout);
    eprintln!(
        "producing {} events to {topic} over {} s of event time ...",
        args.events, args.span_secs
    );
    let span = Duration::from_secs(args.span_secs);
    let produced =
        crate::produce(&config, &topic, args.events, args.users, span).context("produce")?;
    eprintln!("  produced at {produced:.0} events/s");
    eprintln!("bare librdkafka consumer draining ...");
    let bare = crate::bare_drain(&config, &topic, args.events, timeout).context("bare consumer")?;
    eprintln!("  {bare:.0} events/s");

    eprintln!("quiver ingest: {what} ...");
    let log = config.store.dir.join("worker.log");
    let worker = WorkerProcess::start(&config, &[], &log)?;
    let deadline = Instant::now() + timeout;
    let n = args.events as f64;
    let mut first: Option<(Instant, f64, CpuMeter)> = None;
    let mut worker = worker;
    loop {
        let events = worker.metric("quiver_ingest_events_total");
        if events > 0.0 && first.is_none() {
            first = Some((Instant::now(), events, CpuMeter::start(Some(worker.pid()))));
        }
        let predicted = worker.metric("quiver_predictions_total");
        if events >= n && (!scoring || predicted >= n) {
            break;
        }
        if Instant::now() > deadline || !worker.running() {
            bail!(
                "the worker wrote {events} events and {predicted} predictions of {n} (log: {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some((started, at_start, meter)) = first else {
        bail!("no event was written");
    };
    let rate = (n - at_start) / started.elapsed().as_secs_f64();
    let cpu = meter.line();
    let (_, peak) = rss_mib(worker.pid()).unwrap_or_default();
    worker.stop()?;
    eprintln!("  {rate:.0} events/s");

    println!(
        "| drain | events | event time (s) | produce (ev/s) | bare consumer (ev/s) | quiver ingest (ev/s) | ratio | worker peak RSS | CPU (% of one core) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| {what} | {} | {} | {produced:.0} | {bare:.0} | {rate:.0} | {:.1} % | {peak:.0} MiB | {cpu} |",
        args.events,
        args.span_secs,
        100.0 * rate / bare
    );
    let _ = std::fs::remove_dir_all(&config.store.dir);
    Ok(())
}
