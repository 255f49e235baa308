//! `quiver backfill`: recomputes views' feature logs from the raw store (see [`crate::replay`])
//! and, with `--materialize`, writes the final tiles to Redis.
//!
//! The log is rewritten segment by segment: each selected raw segment `part-P-first-last`
//! yields a log segment of the same name in the same date directory, written atomically over
//! any existing one. Old log segments with other boundaries (a streaming replay after a crash
//! can log a range spanning two raw segments) are pulled into the selection whole, and removed
//! once the segments covering them are written, so a backfill never leaves a row twice and
//! re-running one changes nothing.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use quiver_core::{Catalog, Config};
use quiver_features::Shard;
use quiver_features::{FeatureView, ViewCatalog};
use quiver_online::OnlineStore;
use quiver_store::{SegmentFile, SegmentId, SegmentStore, Table};
use tokio::runtime::Handle;

use crate::replay::{
    Progress, Replay, ReplayReport, Sink, TimeRange, in_parallel, segments_in_range,
    views_by_source,
};
use crate::{Error, Result};

/// What to backfill.
#[derive(Debug, Clone, Default)]
pub struct BackfillOptions {
    /// Views to recompute (empty: every view).
    pub views: Vec<String>,
    /// Rewrite the log for the raw segments holding an event in this range.
    pub range: TimeRange,
    /// Also write the final tiles to Redis.
    pub materialize: bool,
}

/// What a backfill did.
#[derive(Debug, Clone, Default)]
pub struct BackfillReport {
    /// Per view replayed.
    pub replays: BTreeMap<String, ReplayReport>,
    /// Log segments written, per view.
    pub written: BTreeMap<String, usize>,
    /// Superseded log segments removed, per view.
    pub removed: BTreeMap<String, usize>,
    /// Shards written to Redis, per view (`--materialize`).
    pub materialized: BTreeMap<String, usize>,
}

struct WriteSink {
    offline: SegmentStore,
    written: BTreeMap<String, Vec<(SegmentId, PathBuf)>>,
}

impl Sink for WriteSink {
    fn segment(
        &mut self,
        view: &FeatureView,
        segment: &SegmentFile,
        rows: RecordBatch,
    ) -> Result<()> {
        let date = segment.date().ok_or_else(|| {
            Error::Replay(format!(
                "raw segment {} is not in a date=YYYY-MM-DD directory",
                segment.path.display()
            ))
        })?;
        let written = self.offline.replace(&view.name, date, segment.id, &rows)?;
        self.written
            .entry(view.name.clone())
            .or_default()
            .push((segment.id, written.path));
        Ok(())
    }
}

/// Adds to `selected` every raw segment that shares an old log segment with a selected one,
/// until nothing changes (so every old log segment touched is rewritten whole).
fn close_selection(raw: &[SegmentFile], logs: &[SegmentFile], selected: &mut HashSet<PathBuf>) {
    let overlaps = |a: &SegmentId, b: &SegmentId| {
        a.partition == b.partition
            && a.first_offset <= b.last_offset
            && b.first_offset <= a.last_offset
    };
    loop {
        let mut grew = false;
        for log in logs {
            let touched = raw
                .iter()
                .any(|r| selected.contains(&r.path) && overlaps(&r.id, &log.id));
            if !touched {
                continue;
            }
            for r in raw.iter().filter(|r| overlaps(&r.id, &log.id)) {
                grew |= selected.insert(r.path.clone());
            }
        }
        if !grew {
            return;
        }
    }
}

/// Whether `id` is covered by the union of `ranges`.
fn covered(id: &SegmentId, ranges: &[SegmentId]) -> bool {
    id.uncovered(ranges).is_empty()
}

/// Runs a backfill: one replay per view, in parallel threads. Call from a blocking thread of a
/// Tokio runtime.
pub fn backfill(
    handle: Handle,
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
    options: &BackfillOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<BackfillReport> {
    let mut report = BackfillReport::default();
    let offline = SegmentStore::open(&config.store.dir, Table::FeatureLog)?;
    let raw_store = SegmentStore::open(&config.store.dir, Table::Raw)?;
    let mut jobs = Vec::new();
    for (source, source_views) in views_by_source(catalog, views, &options.views)? {
        let raw = raw_store.segments(&source.name)?;
        let in_range = segments_in_range(&handle, &config.store.dir, &source, options.range)?;
        for view in source_views {
            let mut selected = in_range.clone();
            close_selection(&raw, &offline.segments(&view.name)?, &mut selected);
            jobs.push((Arc::clone(&source), view, selected));
        }
    }
    let results = in_parallel(jobs, |(source, view, selected)| {
        backfill_view(
            handle.clone(),
            config,
            offline.clone(),
            source,
            view,
            selected,
            options,
            progress,
        )
    })?;
    for outcome in results {
        let name = outcome.view.clone();
        report.replays.insert(name.clone(), outcome.replay);
        report.written.insert(name.clone(), outcome.written);
        report.removed.insert(name.clone(), outcome.removed);
        if let Some(n) = outcome.materialized {
            report.materialized.insert(name, n);
        }
    }
    Ok(report)
}

struct ViewOutcome {
    view: String,
    replay: ReplayReport,
    written: usize,
    removed: usize,
    materialized: Option<usize>,
}

#[allow(clippy::too_many_arguments)]
fn backfill_view(
    handle: Handle,
    config: &Config,
    offline: SegmentStore,
    source: Arc<quiver_core::schema::SourceSchema>,
    view: Arc<FeatureView>,
    selected: HashSet<PathBuf>,
    options: &BackfillOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ViewOutcome> {
    // No compaction merges the view's log while its segments are rewritten and the superseded
    // ones removed.
    let _maintenance = offline.maintenance_lock(&view.name)?;
    let mut sink = WriteSink {
        offline: offline.clone(),
        written: BTreeMap::new(),
    };
    let mut replay = Replay::of_view(
        handle,
        &config.store.dir,
        source,
        Arc::clone(&view),
        selected,
        &mut sink,
        progress,
    )?;
    let replayed = replay.run()?;
    let states = replay.into_states();

    // Old segments the new ones supersede.
    let written = sink.written.remove(&view.name).unwrap_or_default();
    let paths: HashSet<&PathBuf> = written.iter().map(|(_, p)| p).collect();
    let mut ranges: Vec<SegmentId> = written.iter().map(|(id, _)| *id).collect();
    ranges.sort();
    let mut removed = 0;
    for old in offline.segments(&view.name)? {
        if !paths.contains(&old.path) && covered(&old.id, &ranges) {
            offline.remove(&old)?;
            removed += 1;
        }
    }

    let mut materialized = None;
    if options.materialize {
        let mut online = OnlineStore::connect(
            &config.redis.url,
            &config.redis.key_prefix,
            Duration::from_millis(config.redis.connect_timeout_ms),
            Duration::from_millis(config.redis.command_timeout_ms),
        )?;
        for (view, entities) in states {
            // A rebuild under a changed definition starts from an empty view: shards of the
            // old layout must not outlive it for entities the raw store no longer holds.
            let fingerprint = view.fingerprint();
            if let Some(recorded) = online.definition(&view.name)?
                && recorded != fingerprint
            {
                let removed = online.clear_view(&view.name)?;
                tracing::info!(
                    view = %view.name,
                    removed,
                    "definition changed: online state cleared before the rebuild"
                );
            }
            materialized = Some(materialize(&mut online, &view, &entities)?);
            online.record_definition(&view.name, fingerprint)?;
        }
    }
    Ok(ViewOutcome {
        view: view.name.clone(),
        replay: replayed,
        written: written.len(),
        removed,
        materialized,
    })
}

/// Writes every entity's shards of `view` to Redis, partition by partition, in pipelined
/// chunks; a shard Redis holds at a later offset is left as it is. Returns the shards written.
fn materialize(
    online: &mut OnlineStore,
    view: &FeatureView,
    entities: &crate::replay::FinalShards,
) -> Result<usize> {
    let ttl = Duration::from_micros(view.ttl.max(1) as u64);
    let mut by_partition: std::collections::BTreeMap<i32, Vec<(&str, &Shard)>> =
        std::collections::BTreeMap::new();
    for (key, shards) in entities {
        for (p, shard) in shards {
            by_partition
                .entry(*p)
                .or_default()
                .push((key.as_str(), shard));
        }
    }
    let mut written = 0;
    for (partition, shards) in by_partition {
        for chunk in shards.chunks(2000) {
            written += online
                .write_shards(&view.name, partition, ttl, chunk)?
                .written;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(partition: i32, first_offset: i64, last_offset: i64) -> SegmentId {
        SegmentId {
            partition,
            first_offset,
            last_offset,
        }
    }

    fn file(id: SegmentId) -> SegmentFile {
        SegmentFile {
            id,
            path: PathBuf::from(id.file_name("parquet")),
        }
    }

    #[test]
    fn coverage_needs_the_whole_range_of_one_partition() {
        let ranges = [id(0, 0, 9), id(0, 10, 19), id(1, 20, 29)];
        assert!(covered(&id(0, 0, 19), &ranges));
        assert!(covered(&id(0, 5, 12), &ranges));
        assert!(!covered(&id(0, 15, 25), &ranges));
        assert!(!covered(&id(1, 0, 5), &ranges));
    }

    #[test]
    fn a_log_segment_spanning_raw_segments_pulls_its_neighbours_in() {
        let raw = [file(id(0, 0, 9)), file(id(0, 10, 19)), file(id(0, 20, 29))];
        // A replay after a crash logged 5..=19 in one segment.
        let logs = [file(id(0, 0, 4)), file(id(0, 5, 19)), file(id(0, 20, 29))];
        let mut selected = HashSet::from([raw[1].path.clone()]);
        close_selection(&raw, &logs, &mut selected);
        assert!(selected.contains(&raw[0].path));
        assert!(selected.contains(&raw[1].path));
        assert!(!selected.contains(&raw[2].path));
    }
}
