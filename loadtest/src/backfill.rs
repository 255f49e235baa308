//! `quiver-loadtest backfill`: the backfill on a generated raw store, against DuckDB computing
//! the same features over the same events (as Parquet) in the same run.
//!
//! 1. generate `--events` demo transactions over a week straight into a raw store (Arrow IPC
//!    segments, as `quiver ingest` writes them, through the same decoder), keyed to 4 partitions
//!    by user, and the same rows into one Parquet file for the peer;
//! 2. run `quiver backfill` over it in a child process (so its peak RSS is its own);
//! 3. run `loadtest/duckdb_backfill.py` (Python `duckdb`, installed into a venv under `--dir`
//!    if missing) with window functions for the same 12 features; both write Parquet.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use quiver_core::decode::{EventDecoder, RawEvent};
use quiver_core::{Catalog, Config};
use quiver_demo::{Generator, GeneratorOptions};
use quiver_store::{SegmentId, SegmentStore, Table};

/// The DuckDB version the peer runs.
const DUCKDB_VERSION: &str = "2.0.1";
/// Partitions of the generated store.
const PARTITIONS: usize = 4;

/// Options of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BackfillArgs {
    /// Events to generate.
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Events per raw segment (per ingest batch) and partition: 2 000 is ~16 minutes of event
    /// time, so partitions interleave as a live ingest would have written them.
    #[arg(long, default_value_t = 2_000)]
    segment_events: usize,
    /// Work directory (store, Parquet copy, venv); reused if it already holds the store.
    #[arg(long, default_value = "target/bench-backfill")]
    dir: PathBuf,
    /// Skip the DuckDB peer.
    #[arg(long)]
    no_duckdb: bool,
}

fn partition_of(user: &str) -> usize {
    // FNV-1a: any fixed hash keyed by user, as a keyed producer would partition.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % PARTITIONS as u64) as usize
}

/// Writes the raw store and the Parquet copy; returns the Parquet path.
fn generate(config: &Config, catalog: &Catalog, args: &BackfillArgs) -> anyhow::Result<PathBuf> {
    let parquet_path = args.dir.join("events.parquet");
    let marker = args.dir.join("generated");
    if marker.exists() {
        eprintln!("reusing the store in {}", args.dir.display());
        return Ok(parquet_path);
    }
    let source = catalog
        .sources
        .iter()
        .find(|s| s.name == "transactions")
        .cloned()
        .context("no `transactions` source")?;
    let decoder = EventDecoder::new(Arc::clone(&source), 1 << 20);
    let store = SegmentStore::open(&config.store.dir, Table::Raw)?;
    let file = std::fs::File::create(&parquet_path)?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(
            parquet::basic::ZstdLevel::try_new(1)?,
        ))
        .build();
    let mut parquet =
        parquet::arrow::ArrowWriter::try_new(file, Arc::clone(decoder.schema()), Some(props))?;
    let mut generator = Generator::new(
        11,
        GeneratorOptions {
            users: args.users,
            ..GeneratorOptions::default()
        },
    );
    // A week of events, evenly spaced.
    let start = DateTime::<Utc>::from_timestamp(1_795_000_000, 0).context("start time")?;
    let step_us = (7 * 86_400_000_000i64) / args.events.max(1) as i64;
    let mut buffers: Vec<Vec<(i64, String)>> = vec![Vec::new(); PARTITIONS];
    let mut next_offset = [0i64; PARTITIONS];
    let started = Instant::now();
    let flush = |p: usize,
                 buffer: &mut Vec<(i64, String)>,
                 parquet: &mut parquet::arrow::ArrowWriter<std::fs::File>,
                 now: DateTime<Utc>|
     -> anyhow::Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let events: Vec<RawEvent<'_>> = buffer
            .iter()
            .map(|(offset, payload)| RawEvent {
                offset: *offset,
                payload: Some(payload.as_bytes()),
            })
            .collect();
        let outcome = decoder.decode(p as i32, &events, now.timestamp_millis())?;
        if !outcome.rejected.is_empty() {
            bail!("generated events were rejected: {:?}", outcome.rejected[0]);
        }
        let id = SegmentId {
            partition: p as i32,
            first_offset: buffer[0].0,
            last_offset: buffer[buffer.len() - 1].0,
        };
        store.append("transactions", now.date_naive(), id, &outcome.batch)?;
        parquet.write(&outcome.batch)?;
        buffer.clear();
        Ok(())
    };
    let mut now = start;
    for i in 0..args.events {
        now = start + chrono::Duration::microseconds(i as i64 * step_us);
        let txn = generator.next_transaction(now);
        let p = partition_of(&txn.user_id);
        buffers[p].push((next_offset[p], txn.to_json()));
        next_offset[p] += 1;
        if buffers[p].len() >= args.segment_events {
            // The batch is ingested a moment after its last event.
            flush(p, &mut buffers[p], &mut parquet, now)?;
        }
        if i % 1_000_000 == 0 && i > 0 {
            eprintln!(
                "  generated {i} events ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    for (p, buffer) in buffers.iter_mut().enumerate() {
        flush(p, buffer, &mut parquet, now)?;
    }
    parquet.close()?;
    std::fs::write(&marker, args.events.to_string())?;
    eprintln!(
        "generated {} events in {:.0} s",
        args.events,
        started.elapsed().as_secs_f64()
    );
    Ok(parquet_path)
}

/// The child: one backfill, then a JSON line with its figures.
pub(crate) fn child(config_path: Option<&Path>, dir: &Path) -> anyhow::Result<()> {
    let mut config = Config::load(config_path)?;
    config.store.dir = dir.join("store");
    let catalog = Catalog::load(&config.schemas.dir)?;
    let views = quiver_features::ViewCatalog::load(&config.schemas.dir, &catalog)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    let options = quiver_batch::backfill::BackfillOptions::default();
    let started = Instant::now();
    let report = rt.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let progress =
                |p: quiver_batch::replay::Progress| eprintln!("  {}", p.line("backfill"));
            quiver_batch::backfill::backfill(handle, &config, &catalog, &views, &options, &progress)
        })
        .await
    })??;
    let secs = started.elapsed().as_secs_f64();
    // Every view replays every event of its source: count events once.
    let events: u64 = report.replays.values().map(|r| r.events).max().unwrap_or(0);
    let rows: u64 = report.replays.values().map(|r| r.rows).sum();
    println!(
        "{}",
        serde_json::json!({
            "seconds": secs,
            "events": events,
            "rows": rows,
            "peak_rss_mib": crate::rss_peak_mib(),
        })
    );
    Ok(())
}

fn json_line(out: &std::process::Output, what: &str) -> anyhow::Result<serde_json::Value> {
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{what} printed no result: {text}"))?;
    Ok(serde_json::from_str(line)?)
}

fn duckdb_python(dir: &Path) -> anyhow::Result<PathBuf> {
    let venv = dir.join("venv");
    let python = venv.join("bin").join("python");
    let ok = Command::new(&python)
        .args(["-c", "import duckdb"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "installing duckdb=={DUCKDB_VERSION} into {} ...",
            venv.display()
        );
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        if !status.success() {
            bail!("python3 -m venv failed");
        }
        let status = Command::new(venv.join("bin").join("pip"))
            .args(["install", "-q", &format!("duckdb=={DUCKDB_VERSION}")])
            .status()?;
        if !status.success() {
            bail!("pip install duckdb failed");
        }
    }
    Ok(python)
}

pub(crate) fn run(config_path: Option<&Path>, args: BackfillArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let mut config = Config::load(config_path)?;
    config.store.dir = args.dir.join("store");
    let catalog = Catalog::load(&config.schemas.dir)?;
    eprintln!(
        "generating {} events into {} ...",
        args.events,
        args.dir.display()
    );
    let parquet = generate(&config, &catalog, &args)?;

    eprintln!("quiver backfill (child process) ...");
    let mut cmd = Command::new(std::env::current_exe()?);
    if let Some(c) = config_path {
        cmd.arg("--config").arg(c);
    }
    cmd.args(["backfill-child", "--dir"]).arg(&args.dir);
    cmd.stderr(std::process::Stdio::inherit());
    let ours = json_line(&cmd.output()?, "quiver backfill")?;
    let events = ours["events"].as_f64().unwrap_or(0.0);
    let our_secs = ours["seconds"].as_f64().unwrap_or(f64::NAN);

    let mut peer = None;
    if !args.no_duckdb {
        let python = duckdb_python(&args.dir)?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("duckdb_backfill.py");
        eprintln!("duckdb {DUCKDB_VERSION} over {} ...", parquet.display());
        let out = Command::new(python)
            .arg(script)
            .arg(&parquet)
            .arg(args.dir.join("duckdb-features.parquet"))
            .stderr(std::process::Stdio::inherit())
            .output()?;
        peer = Some(json_line(&out, "duckdb")?);
    }

    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "| backfill | events | seconds | events/s | peak RSS |"
    )?;
    writeln!(stdout, "|---|---:|---:|---:|---:|")?;
    writeln!(
        stdout,
        "| quiver backfill (2 views, 12 features, log to Parquet) | {events:.0} | {our_secs:.1} | {:.0} | {:.0} MiB |",
        events / our_secs,
        ours["peak_rss_mib"].as_f64().unwrap_or(0.0)
    )?;
    if let Some(p) = peer {
        let secs = p["seconds"].as_f64().unwrap_or(f64::NAN);
        writeln!(
            stdout,
            "| DuckDB {DUCKDB_VERSION} window SQL (same features, to Parquet) | {:.0} | {secs:.1} | {:.0} | {:.0} MiB |",
            p["rows"].as_f64().unwrap_or(0.0),
            p["rows"].as_f64().unwrap_or(0.0) / secs,
            p["peak_rss_mib"].as_f64().unwrap_or(0.0)
        )?;
        writeln!(
            stdout,
            "\nquiver / DuckDB time ratio: {:.2}",
            our_secs / secs
        )?;
    }
    Ok(())
}
