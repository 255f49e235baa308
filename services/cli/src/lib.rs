//! The `quiver` command line: argument definitions and the commands behind them.
//!
//! `main` only parses ([`Cli`]), loads configuration and schemas ([`load`]), starts telemetry
//! ([`init_telemetry`]) and calls [`run`]. Each command drives a service library; this crate
//! holds no pipeline logic of its own.

mod batch;
mod commands;
mod models;
mod monitor;
mod up;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use quiver_core::{Catalog, Config};
use quiver_telemetry::LogFormat;

/// Quiver: streaming online/offline features and scoring.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, about, long_about = None)]
pub struct Cli {
    /// TOML config file (overrides the embedded defaults; `QUIVER__SECTION__KEY` env vars
    /// override both).
    #[arg(long, global = true, env = "QUIVER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline locally with demo data: stack up, the streaming worker, the API,
    /// the demo producer, and a first model trained and promoted after a warm-up.
    Up(UpArgs),
    /// The streaming worker: consume the declared sources into the raw store, the online
    /// features (Redis) and the feature log (Parquet), and score each event with the deployed
    /// model to the predictions topic.
    Ingest,
    /// Serve online features over HTTP (`api.listen`).
    Serve,
    /// Run DataFusion SQL over the stores: tables `raw_<source>` and `features_<view>`.
    Sql {
        /// The query, e.g. "SELECT user_id, count(*) FROM raw_transactions GROUP BY 1".
        query: String,
        /// Write the result to this .parquet or .csv file instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Recompute feature logs from the raw store (DataFusion + the streaming aggregation core);
    /// `--materialize` also rebuilds the online store.
    Backfill(BackfillArgs),
    /// Recompute every event's vector in batch and compare it with the streaming feature log.
    Verify(Selection),
    /// Training sets.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Train a model on a training set, evaluate it on its test split, register it.
    Train(TrainArgs),
    /// The model registry: list, show, promote, rollback, canary, shadow.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Demo data.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// The local development stack (tansu broker + Redis on loopback).
    #[command(subcommand)]
    Stack(StackCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Monitoring of the deployed models.
    #[command(subcommand)]
    Monitor(MonitorCommand),
    /// The file stores (raw store, feature log, score store, monitor history).
    #[command(subcommand)]
    Store(StoreCommand),
    /// The declared topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
}

/// `quiver topics ...`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum TopicsCommand {
    /// Create the declared topics (sources, their dead-letter topics, predictions) on
    /// `kafka.brokers` — any Kafka-protocol cluster; topics that exist are left as they are.
    Create,
}

/// `quiver store ...`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum StoreCommand {
    /// Remove what `store.retention` no longer keeps and merge runs of small segments (one
    /// partition, one day, at least two days old) up to `store.compact_target_bytes`. Safe
    /// while the worker runs.
    Compact {
        /// Show what would be removed and merged; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `quiver monitor ...`.
#[derive(Debug, Subcommand)]
pub enum MonitorCommand {
    /// Each model that made predictions in the window against its training baseline: served,
    /// latency, drift per input and of the scores, labels joined, realised ROC AUC next to the
    /// estimated one and the test split's.
    Report(MonitorReportArgs),
    /// The live monitor: tails the score store and the labels' raw store, and every
    /// `monitor.interval` reports each deployed model's window (`monitor.window`) as metrics on
    /// `monitor.admin_listen` and as a row of the `monitor` table. `quiver up` runs it too.
    Run,
}

/// `quiver monitor report`.
#[derive(Debug, Clone, Args)]
pub struct MonitorReportArgs {
    /// Only this model.
    #[arg(long)]
    pub model: Option<String>,
    /// How far back: a number and s, m, h or d.
    #[arg(long, default_value = "10m")]
    pub window: String,
    /// Predictions needed before drift and realised metrics are reported.
    #[arg(long, default_value_t = 200)]
    pub min_rows: usize,
    /// The scored source (default: the first source with an event id that is not the labels).
    #[arg(long)]
    pub source: Option<String>,
    /// The source whose events label the predictions (joined by event id).
    #[arg(long, default_value = "labels")]
    pub labels: String,
    /// Its boolean column (default: its only boolean field).
    #[arg(long)]
    pub label_column: Option<String>,
    /// Print JSON (the report's stable field names) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `quiver up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Demo options.
    #[command(flatten)]
    pub demo: ProduceArgs,
    /// Stop once the demo data is produced and ingested, instead of running until Ctrl-C.
    #[arg(long)]
    pub exit_when_done: bool,
    /// Seconds of demo traffic before the first model is trained from the labels gathered.
    #[arg(long, default_value_t = 20)]
    pub warmup_secs: u64,
}

/// Which views and which events (by event time) `backfill` and `verify` cover.
#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// Views (repeat or comma-separate; default: all).
    #[arg(long, value_name = "VIEW")]
    pub view: Vec<String>,
    /// Events at or after this time (RFC 3339 or date). The backfill rewrites every raw
    /// segment holding such an event whole.
    #[arg(long)]
    pub from: Option<String>,
    /// ... and before this time.
    #[arg(long)]
    pub to: Option<String>,
}

/// `quiver backfill`.
#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    /// Views and time range.
    #[command(flatten)]
    pub selection: Selection,
    /// Also write the final tiles to Redis (rebuilds the online store; stop ingest first).
    #[arg(long)]
    pub materialize: bool,
}

/// `quiver dataset ...`.
#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Build a point-in-time-correct training set with a time-based train/test split.
    Build(DatasetArgs),
}

/// `quiver dataset build`.
#[derive(Debug, Clone, Args)]
pub struct DatasetArgs {
    /// Labels: a source name (its raw store, e.g. `labels`) or a Parquet file or directory.
    #[arg(long)]
    pub labels: String,
    /// Views to join (comma-separated; default: all).
    #[arg(long, value_name = "VIEWS")]
    pub views: Vec<String>,
    /// Output directory (train.parquet, test.parquet, manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Label column (default: the labels' only boolean column).
    #[arg(long)]
    pub label_column: Option<String>,
    /// Time column of labels that carry keys and a time rather than an event id.
    #[arg(long)]
    pub time_column: Option<String>,
    /// Fraction of rows, latest by time, in the test split.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Only the latest N labelled events by time (e.g. a recent window to retrain on).
    #[arg(long)]
    pub latest: Option<usize>,
    /// Features recomputed from the raw store at each label's time (point in time), or the
    /// vectors the worker logged and scored the labelled events with (labels by event id).
    #[arg(long, value_enum, default_value_t = VectorsArg::Recomputed)]
    pub vectors: VectorsArg,
    /// Only labels at or before this time (RFC 3339 or a date).
    #[arg(long)]
    pub until: Option<String>,
}

/// `--vectors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VectorsArg {
    /// From the raw store, over the events with event time ≤ the label's.
    Recomputed,
    /// The feature log's rows of the labelled events: what serving saw.
    Logged,
}

/// `quiver train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// A directory written by `quiver dataset build`.
    #[arg(long)]
    pub dataset: PathBuf,
    /// `logistic_regression` or `random_forest`.
    #[arg(long, default_value = "logistic_regression")]
    pub model: String,
    /// Logistic regression: L2 regularisation.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Random forest: trees.
    #[arg(long)]
    pub trees: Option<u16>,
    /// Random forest: maximum depth.
    #[arg(long)]
    pub max_depth: Option<u16>,
    /// Seed (bootstrap samples, input subsets).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Try a small hyper-parameter grid and register the best (test ROC AUC).
    #[arg(long)]
    pub grid: bool,
    /// Promote the new model to production.
    #[arg(long)]
    pub promote: bool,
    /// Promote only if it beats production's ROC AUC on this test split.
    #[arg(long)]
    pub promote_if_better: bool,
}

/// `quiver models ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ModelsCommand {
    /// Every registered model with its test metrics and status.
    List,
    /// A model's card (parameters, dataset, metrics, training time).
    Show {
        /// Model id.
        id: String,
    },
    /// Make a model production (running workers switch within `score.reload_interval_ms`).
    Promote {
        /// Model id.
        id: String,
    },
    /// Put the previous production model back.
    Rollback,
    /// Let a candidate decide a fraction of events.
    Canary {
        /// Model id.
        id: Option<String>,
        /// Fraction of events (by event id).
        #[arg(long, default_value_t = 0.1)]
        fraction: f64,
        /// Remove the canary.
        #[arg(long)]
        clear: bool,
    },
    /// Score every event with a candidate too, without it deciding.
    Shadow {
        /// Model id.
        id: Option<String>,
        /// Remove the shadow.
        #[arg(long)]
        clear: bool,
    },
}

/// `quiver demo ...`.
#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Produce synthetic transactions (with a hidden fraud pattern) and delayed labels.
    Produce(ProduceArgs),
}

/// Options of the demo producer.
#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Transactions per second (0: as fast as possible).
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// Transactions to produce (0: until Ctrl-C).
    #[arg(long, default_value_t = 60_000)]
    pub count: u64,
    /// Random seed: the same seed gives the same users, merchants, amounts and fraud.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Seconds between a transaction and its label.
    #[arg(long, default_value_t = 5.0)]
    pub label_delay: f64,
    /// Fraction of transactions replaced by malformed events (exercises the dead-letter topic).
    #[arg(long, default_value_t = 0.001)]
    pub malformed: f64,
    /// Distinct users.
    #[arg(long, default_value_t = 5_000)]
    pub users: u32,
    /// Change the world after this many transactions (`20000`) or this long (`2m`: at the
    /// rate): legitimate amounts grow 2.5×, card holders pay abroad half of the time, and fraud
    /// takes a shape the first model never saw — for watching the drift of the shifted inputs
    /// and the realised AUC fall (then, in `quiver up`, a model retrained). In `quiver up` it
    /// counts from the start of the live traffic.
    #[arg(long, value_parser = parse_shift)]
    pub shift_after: Option<Shift>,
    /// Time-lapse: space the transactions this far apart in event time (`20s`), ending now, so
    /// a run covers days and the features' hour-to-week windows fill as in production (needs
    /// `--count`). Without it events are stamped with the wall clock, and a short run's windows
    /// are still filling when it ends.
    #[arg(long, value_parser = parse_lapse)]
    pub time_lapse: Option<u64>,
}

/// A `--time-lapse` duration, in milliseconds.
fn parse_lapse(text: &str) -> Result<u64, String> {
    quiver_core::duration::parse(text)
        .and_then(|us| u64::try_from(us / 1_000).ok())
        .filter(|ms| *ms > 0)
        .ok_or_else(|| format!("`{text}`: a duration like 20s or 5m"))
}

/// When the demo's world changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shift {
    /// After this many transactions.
    Events(u64),
    /// After this many seconds (at the producer's rate).
    Seconds(u64),
}

impl Shift {
    /// The transaction count after which it happens, at `rate` per second.
    pub fn events(self, rate: u64) -> u64 {
        match self {
            Shift::Events(n) => n,
            Shift::Seconds(s) => s.saturating_mul(rate.max(1)),
        }
    }
}

fn parse_shift(text: &str) -> Result<Shift, String> {
    if let Ok(n) = text.parse::<u64>() {
        return Ok(Shift::Events(n));
    }
    quiver_core::duration::parse(text)
        .map(|us| Shift::Seconds(u64::try_from(us / 1_000_000).unwrap_or(0)))
        .ok_or_else(|| format!("`{text}`: a number of transactions or a duration like 2m"))
}

/// `quiver stack ...`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum StackCommand {
    /// Install what is missing, start tansu and Redis, create the declared topics.
    Up,
    /// Stop what `up` started.
    Down,
    /// Show what runs.
    Status,
}

/// `quiver config ...`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (defaults + file + environment).
    Show,
    /// Validate configuration and schemas; exit non-zero on any problem.
    Check,
}

/// Configuration and schemas, loaded once at start-up.
#[derive(Debug, Clone)]
pub struct Context {
    /// Effective configuration.
    pub config: Config,
    /// Declared sources.
    pub catalog: Catalog,
    /// Declared feature views.
    pub views: quiver_features::ViewCatalog,
}

/// Loads configuration, source schemas and feature views; the first layer that fails is
/// reported with every problem it has.
pub fn load(cli: &Cli) -> anyhow::Result<Context> {
    let config = Config::load(cli.config.as_deref())?;
    let catalog = Catalog::load(&config.schemas.dir)?;
    let views = quiver_features::ViewCatalog::load(&config.schemas.dir, &catalog)?;
    Ok(Context {
        config,
        catalog,
        views,
    })
}

/// Starts logging as configured.
pub fn init_telemetry(config: &Config) -> anyhow::Result<()> {
    let format = if config.telemetry.log_format == "json" {
        LogFormat::Json
    } else {
        LogFormat::Pretty
    };
    quiver_telemetry::init_tracing(format, &config.telemetry.log_level)?;
    Ok(())
}

/// Runs a parsed command.
pub fn run(cli: Cli, ctx: Context) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("quiver")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(&ctx, args).await,
            Command::Ingest => commands::ingest(&ctx).await,
            Command::Serve => commands::serve(&ctx).await,
            Command::Sql { query, out } => commands::sql(&ctx, &query, out.as_deref()).await,
            Command::Backfill(args) => batch::backfill(&ctx, args).await,
            Command::Verify(args) => batch::verify(&ctx, args).await,
            Command::Dataset(DatasetCommand::Build(args)) => batch::dataset(&ctx, args).await,
            Command::Train(args) => models::train(&ctx, args),
            Command::Models(cmd) => models::models(&ctx, cmd),
            Command::Demo(DemoCommand::Produce(args)) => commands::produce(&ctx, args).await,
            Command::Stack(cmd) => commands::stack(&ctx, cmd).await,
            Command::Monitor(MonitorCommand::Report(args)) => {
                monitor::report_command(&ctx, args).await
            }
            Command::Monitor(MonitorCommand::Run) => monitor::run_command(&ctx).await,
            Command::Topics(TopicsCommand::Create) => commands::topics(&ctx).await,
            Command::Store(StoreCommand::Compact { dry_run }) => {
                batch::compact(&ctx, dry_run).await
            }
            Command::Config(ConfigCommand::Show) => {
                print!("{}", ctx.config.to_toml());
                Ok(())
            }
            Command::Config(ConfigCommand::Check) => {
                let names = |it: &mut dyn Iterator<Item = &str>| it.collect::<Vec<_>>().join(", ");
                println!(
                    "configuration OK; {} source(s): {}; {} feature view(s): {}",
                    ctx.catalog.sources.len(),
                    names(&mut ctx.catalog.sources.iter().map(|s| s.name.as_str())),
                    ctx.views.views.len(),
                    names(&mut ctx.views.views.iter().map(|v| v.name.as_str())),
                );
                Ok(())
            }
        }
    })
}
