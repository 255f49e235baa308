//! `quiver-loadtest memory`: the worker's memory against its state cache bound. `--events` demo
//! transactions over `--users` distinct users are drained by the worker (with the model
//! deployed, every store on) once per `--cache` bound, each run on a fresh group, store and key
//! prefix; the worker's RSS is sampled every second. The slope between two bounds is the cost of
//! one cached entity; what is left at the smallest bound is the constant.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use quiver_core::Catalog;
use quiver_features::ViewCatalog;

use crate::procs::{WorkerProcess, rss_mib};

/// Options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MemoryArgs {
    /// Events to drain.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 1_000_000)]
    users: u32,
    /// `ingest.state_cache_entities` bounds to run with (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [50_000usize, 200_000])]
    cache: Vec<usize>,
    /// Seconds to wait for a drain.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
}

/// One run's figures.
struct Run {
    bound: usize,
    entities: f64,
    rss: f64,
    peak: f64,
    seconds: f64,
}

pub(crate) fn run(config_path: Option<&std::path::Path>, args: MemoryArgs) -> anyhow::Result<()> {
    let (config, run_id) = crate::fresh_config(config_path, "mem")?;
    let catalog = Catalog::load(&config.schemas.dir)?;
    let views = ViewCatalog::load(&config.schemas.dir, &catalog)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(quiver_kafka::create_topics(
        &config.kafka,
        &quiver_stack::declared_topics(&config, &catalog),
    ))?;
    std::fs::create_dir_all(&config.store.dir)?;
    crate::model::deploy_first_model(&config, &catalog, &views, &rt)?;
    let topic = config.kafka.topic("transactions");
    eprintln!(
        "producing {} events over {} users to {topic} ...",
        args.events, args.users
    );
    crate::produce(
        &config,
        &topic,
        args.events,
        args.users,
        crate::span_at_100_us(args.events),
    )
    .context("produce")?;
    let mut runs = Vec::new();
    for (i, bound) in args.cache.iter().copied().enumerate() {
        let mut c = config.clone();
        c.ingest.group_id = format!("mem-{run_id}-{i}");
        c.redis.key_prefix = format!("mem-{run_id}-{i}");
        c.store.dir = config.store.dir.join(format!("run-{i}"));
        std::fs::create_dir_all(&c.store.dir)?;
        crate::model::copy_dir(
            &config.store.dir.join("models"),
            &c.store.dir.join("models"),
        )?;
        eprintln!("worker with state_cache_entities = {bound} ...");
        let log = c.store.dir.join("worker.log");
        let mut worker = WorkerProcess::start(
            &c,
            &[("QUIVER__INGEST__STATE_CACHE_ENTITIES", bound.to_string())],
            &log,
        )?;
        let started = Instant::now();
        let n = args.events as f64;
        loop {
            let predicted = worker.metric("quiver_predictions_total");
            if predicted >= n {
                break;
            }
            if started.elapsed() > Duration::from_secs(args.timeout) || !worker.running() {
                bail!("{predicted} of {n} predictions (log: {})", log.display());
            }
            if let Some((rss, _)) = rss_mib(worker.pid()) {
                eprintln!(
                    "  {:>5.0} s: {predicted:>8.0} predictions, RSS {rss:.0} MiB, {:.0} user entities cached",
                    started.elapsed().as_secs_f64(),
                    worker.metric("quiver_state_cache_entities{view=\"user_txn\"}")
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let seconds = started.elapsed().as_secs_f64();
        // Let the last flushes and evictions settle.
        std::thread::sleep(Duration::from_secs(3));
        let entities = worker.metric("quiver_state_cache_entities");
        let (rss, peak) = rss_mib(worker.pid()).unwrap_or_default();
        worker.stop()?;
        runs.push(Run {
            bound,
            entities,
            rss,
            peak,
            seconds,
        });
    }
    println!(
        "| state_cache_entities | entities cached (all views) | RSS after the drain | peak RSS | drain time |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for r in &runs {
        println!(
            "| {} | {:.0} | {:.0} MiB | {:.0} MiB | {:.0} s |",
            r.bound, r.entities, r.rss, r.peak, r.seconds
        );
    }
    if let (Some(a), Some(b)) = (runs.first(), runs.last())
        && b.entities > a.entities
    {
        let per_entity = (b.rss - a.rss) * 1_048_576.0 / (b.entities - a.entities);
        let constant = a.rss - a.entities * per_entity / 1_048_576.0;
        println!(
            "\nper cached entity: {per_entity:.0} bytes; constant: {constant:.0} MiB (RSS ≈ constant + entities × per entity)"
        );
    }
    let _ = std::fs::remove_dir_all(&config.store.dir);
    Ok(())
}
