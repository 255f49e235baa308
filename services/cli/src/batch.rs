//! `quiver backfill`, `quiver verify` and `quiver dataset build`: thin drivers of `quiver-batch`
//! with progress on stderr.

use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use quiver_batch::backfill::BackfillOptions;
use quiver_batch::dataset::{DatasetOptions, Vectors};
use quiver_batch::replay::{Progress, TimeRange};

use crate::{BackfillArgs, Context, DatasetArgs, Selection};

/// Parses `--from` / `--to`: RFC 3339 (`2026-11-26T10:00:00Z`) or a date (`2026-11-26`, midnight
/// UTC), to µs since the epoch.
pub(crate) fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc).timestamp_micros());
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc().timestamp_micros());
    }
    anyhow::bail!(
        "`{text}` is not a time: use RFC 3339 (2026-11-26T10:00:00Z) or a date (2026-11-26)"
    )
}

/// The views and time range of a selection.
fn selection(s: &Selection) -> anyhow::Result<(Vec<String>, TimeRange)> {
    Ok((
        split_names(&s.view),
        range(s.from.as_deref(), s.to.as_deref())?,
    ))
}

fn range(from: Option<&str>, to: Option<&str>) -> anyhow::Result<TimeRange> {
    let range = TimeRange {
        from: from.map(parse_time).transpose().context("--from")?,
        to: to.map(parse_time).transpose().context("--to")?,
    };
    if let (Some(f), Some(t)) = (range.from, range.to) {
        anyhow::ensure!(f < t, "--from must be before --to");
    }
    Ok(range)
}

fn split_names(names: &[String]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| n.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

fn printer(what: &'static str) -> impl Fn(Progress) + Sync {
    move |p: Progress| eprintln!("{}", p.line(what))
}

/// Warns, per source, when retention removed raw events: a replay of what remains starts
/// without them, so values whose window reaches back before them are incomplete.
fn warn_removed_history(ctx: &Context, what: &str) -> anyhow::Result<()> {
    let raw = quiver_store::SegmentStore::open(&ctx.config.store.dir, quiver_store::Table::Raw)?;
    for source in &ctx.catalog.sources {
        if let Some(from) = quiver_batch::verify::history_from(&raw, &source.name)? {
            let when = DateTime::from_timestamp_micros(from)
                .map_or_else(|| "the present".to_string(), |t| t.to_rfc3339());
            eprintln!(
                "warning: retention removed raw events of `{}` up to {when}: {what} recomputes \
                 lifetime values and windows reaching back before that from what remains",
                source.name
            );
        }
    }
    Ok(())
}

pub(crate) async fn backfill(ctx: &Context, args: BackfillArgs) -> anyhow::Result<()> {
    warn_removed_history(ctx, "backfill")?;
    let (views, range) = selection(&args.selection)?;
    let options = BackfillOptions {
        views,
        range,
        materialize: args.materialize,
    };
    let ctx = ctx.clone();
    let handle = tokio::runtime::Handle::current();
    let report = tokio::task::spawn_blocking(move || {
        let progress = printer("backfill");
        quiver_batch::backfill::backfill(
            handle,
            &ctx.config,
            &ctx.catalog,
            &ctx.views,
            &options,
            &progress,
        )
    })
    .await
    .context("backfill thread panicked")??;
    for (view, r) in &report.replays {
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "backfill {view}: {} events from {} raw segments in {:.1} s ({:.0} k events/s), \
             {} rows recomputed, {} late, {} clock divergences",
            r.events,
            r.segments,
            secs,
            r.events as f64 / secs / 1e3,
            r.rows,
            r.late,
            r.clock_divergences
        );
    }
    for (view, written) in &report.written {
        let removed = report.removed.get(view).copied().unwrap_or(0);
        let materialized = report
            .materialized
            .get(view)
            .map(|n| format!(", {n} shards written to Redis"))
            .unwrap_or_default();
        println!(
            "{view}: {written} log segment(s) written, {removed} superseded removed{materialized}"
        );
    }
    Ok(())
}

pub(crate) async fn verify(ctx: &Context, args: Selection) -> anyhow::Result<()> {
    let (names, range) = selection(&args)?;
    let ctx = ctx.clone();
    let handle = tokio::runtime::Handle::current();
    let report = tokio::task::spawn_blocking(move || {
        let progress = printer("verify");
        quiver_batch::verify::verify(
            handle,
            &ctx.config,
            &ctx.catalog,
            &ctx.views,
            &names,
            range,
            &progress,
        )
    })
    .await
    .context("verify thread panicked")??;
    print!("{}", report.render());
    let divergences: u64 = report.replays.values().map(|r| r.clock_divergences).sum();
    if divergences > 0 {
        println!(
            "{divergences} row(s) had a logged clock the replay could not meet (concurrent ingest members)"
        );
    }
    let problems = report.problems();
    anyhow::ensure!(
        problems == 0,
        "verify: {problems} mismatch(es) between the streaming log and the batch recomputation"
    );
    println!("verify: streaming and batch agree on every compared event");
    Ok(())
}

pub(crate) async fn dataset(ctx: &Context, args: DatasetArgs) -> anyhow::Result<()> {
    warn_removed_history(ctx, "the training set")?;
    let options = DatasetOptions {
        labels: args.labels,
        views: split_names(&args.views),
        out: args.out,
        label_column: args.label_column,
        time_column: args.time_column,
        test_fraction: args.test_fraction,
        latest: args.latest,
        vectors: match args.vectors {
            crate::VectorsArg::Recomputed => Vectors::Recomputed,
            crate::VectorsArg::Logged => Vectors::Logged,
        },
        until: args
            .until
            .as_deref()
            .map(parse_time)
            .transpose()
            .context("--until")?,
    };
    let ctx = ctx.clone();
    let handle = tokio::runtime::Handle::current();
    let started = Instant::now();
    let report = tokio::task::spawn_blocking(move || {
        quiver_batch::dataset::build(handle, &ctx.config, &ctx.catalog, &ctx.views, &options)
    })
    .await
    .context("dataset thread panicked")??;
    let m = &report.manifest;
    println!(
        "dataset: {} train + {} test rows, {} features ({}), label `{}` ({:.2} % / {:.2} % positive), \
         joined {}; {:.1} s",
        m.train.rows,
        m.test.rows,
        m.features.len(),
        m.vectors.name(),
        m.label_column,
        100.0 * m.train.positive_rate,
        100.0 * m.test.positive_rate,
        m.join,
        started.elapsed().as_secs_f64()
    );
    if m.unlogged_labels > 0 {
        println!(
            "  {} label row(s) left out: no logged vector for their event",
            m.unlogged_labels
        );
    }
    for f in &report.files {
        println!("  {}", f.display());
    }
    Ok(())
}

pub(crate) async fn compact(ctx: &Context, dry_run: bool) -> anyhow::Result<()> {
    let options = quiver_batch::compact::CompactOptions {
        dry_run,
        now: Utc::now(),
    };
    let ctx = ctx.clone();
    let started = Instant::now();
    let done = tokio::task::spawn_blocking(move || {
        quiver_batch::compact::compact(&ctx.config, &ctx.catalog, &ctx.views, options, &|s| {
            eprintln!("{}", s.line(dry_run));
        })
    })
    .await
    .context("the compaction task failed")??;
    let dropped: usize = done.iter().map(|s| s.done.dropped).sum();
    let merged: usize = done.iter().map(|s| s.done.merged_from).sum();
    let into: usize = done.iter().map(|s| s.done.merged_into).sum();
    println!(
        "{}{} stream(s): {dropped} segment(s) past retention removed, {merged} merged into {into}, in {:.1} s",
        if dry_run {
            "dry run, nothing changed; "
        } else {
            ""
        },
        done.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_dates() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1_000_000);
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000_000);
        assert!(parse_time("yesterday").is_err());
        assert!(range(Some("1970-01-02"), Some("1970-01-01")).is_err());
        assert_eq!(split_names(&["a,b".into(), " c ".into()]), ["a", "b", "c"]);
    }
}
