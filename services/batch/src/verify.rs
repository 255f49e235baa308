//! `quiver verify`: recomputes every event's vector with the batch replay and compares it, event
//! by event and feature by feature, with the row the streaming path logged. Counts, minima,
//! maxima, `last` and distinct counts must be equal; float sums, means and standard deviations
//! may differ by 1e-9 relative (`../shared/DESIGN.md`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::prelude::SessionContext;
use quiver_core::schema::OFFSET_COLUMN;
use quiver_core::{Catalog, Config};
use quiver_features::definition::Window;
use quiver_features::log::{Column, EVENT_TIME_COLUMN, values_agree};
use quiver_features::{FeatureView, ViewCatalog};
use quiver_store::{SegmentFile, SegmentStore, Table};
use tokio::runtime::Handle;

use crate::replay::{
    Progress, Replay, ReplayReport, Sink, TimeRange, in_parallel, segments_in_range,
    views_by_source,
};
use crate::{Error, Result};

/// Examples kept per feature.
const EXAMPLES: usize = 3;

/// One feature's comparison.
#[derive(Debug, Clone, Default)]
pub struct FeatureCheck {
    /// Feature name.
    pub name: String,
    /// Events compared.
    pub compared: u64,
    /// Events whose values differ beyond the tolerance.
    pub mismatches: u64,
    /// Events not compared: the value's window reaches back before the raw history retention
    /// left (every lifetime value, once any was removed), so the replay cannot reproduce it.
    pub beyond_history: u64,
    /// A few mismatches, described.
    pub examples: Vec<String>,
}

/// One view's comparison.
#[derive(Debug, Clone, Default)]
pub struct ViewCheck {
    /// View name.
    pub view: String,
    /// Events compared.
    pub events: u64,
    /// Events in the raw store (and the range) that have no streaming log row.
    pub missing: u64,
    /// Events whose streaming log row retention removed (not counted as missing).
    pub log_removed: u64,
    /// The newest event time retention removed from the view's source (µs), if any: values
    /// whose window reaches back before it are not compared.
    pub history_from: Option<i64>,
    /// Per feature, in declaration order.
    pub features: Vec<FeatureCheck>,
}

/// The result of `quiver verify`.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Per view.
    pub views: Vec<ViewCheck>,
    /// Per view replayed.
    pub replays: BTreeMap<String, ReplayReport>,
}

impl VerifyReport {
    /// Mismatched values plus events missing from the log.
    pub fn problems(&self) -> u64 {
        self.views
            .iter()
            .map(|v| v.missing + v.features.iter().map(|f| f.mismatches).sum::<u64>())
            .sum()
    }

    /// A table per view: feature, events compared, mismatches, rate; then examples.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for v in &self.views {
            let _ = writeln!(
                out,
                "view {}: {} events compared, {} without a streaming row",
                v.view, v.events, v.missing
            );
            if let Some(from) = v.history_from {
                let _ = writeln!(
                    out,
                    "  retention removed raw events up to {}: values whose window reaches back before it are not compared ({} log rows removed too)",
                    chrono::DateTime::from_timestamp_micros(from)
                        .map_or_else(|| from.to_string(), |t| t.to_rfc3339()),
                    v.log_removed
                );
            } else if v.log_removed > 0 {
                let _ = writeln!(
                    out,
                    "  {} events' log rows were removed by retention",
                    v.log_removed
                );
            }
            let width = v
                .features
                .iter()
                .map(|f| f.name.len())
                .max()
                .unwrap_or(7)
                .max(7);
            let _ = writeln!(
                out,
                "  {:<width$}  {:>10}  {:>10}  {:>9}  {:>14}",
                "feature", "compared", "mismatches", "rate", "before history"
            );
            for f in &v.features {
                let rate = if f.compared > 0 {
                    100.0 * f.mismatches as f64 / f.compared as f64
                } else {
                    0.0
                };
                let _ = writeln!(
                    out,
                    "  {:<width$}  {:>10}  {:>10}  {:>8.4}%  {:>14}",
                    f.name, f.compared, f.mismatches, rate, f.beyond_history
                );
            }
            for f in v.features.iter().filter(|f| !f.examples.is_empty()) {
                for e in &f.examples {
                    let _ = writeln!(out, "  example {}: {e}", f.name);
                }
            }
        }
        out
    }
}

/// Streaming log batches, and where each offset's row is (batch, row).
type Streamed = (Vec<RecordBatch>, HashMap<i64, (usize, usize)>);

struct CompareSink {
    handle: Handle,
    ctx: SessionContext,
    range: TimeRange,
    /// Existing log segments per view and partition.
    logs: HashMap<String, BTreeMap<i32, Vec<SegmentFile>>>,
    /// Per partition, the last offset whose log row retention removed.
    log_removed: BTreeMap<i32, i64>,
    /// The newest event time retention removed from the raw store (µs).
    history_from: Option<i64>,
    checks: HashMap<String, ViewCheck>,
}

impl CompareSink {
    /// The streaming rows of `view` for offsets in `segment`, keyed by offset.
    fn streamed(&self, view: &str, segment: &SegmentFile) -> Result<Streamed> {
        let mut batches = Vec::new();
        let mut index = HashMap::new();
        let Some(files) = self
            .logs
            .get(view)
            .and_then(|p| p.get(&segment.id.partition))
        else {
            return Ok((batches, index));
        };
        for file in files.iter().filter(|f| {
            f.id.first_offset <= segment.id.last_offset
                && segment.id.first_offset <= f.id.last_offset
        }) {
            let batch = crate::replay::read_segment(&self.handle, &self.ctx, file, &[])?;
            let offsets = offsets(&batch)?;
            for row in 0..offsets.len() {
                index.insert(offsets.value(row), (batches.len(), row));
            }
            batches.push(batch);
        }
        Ok((batches, index))
    }
}

fn offsets(batch: &RecordBatch) -> Result<Int64Array> {
    batch
        .column_by_name(OFFSET_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .cloned()
        .ok_or_else(|| Error::Replay("feature log without an int64 `_offset` column".into()))
}

impl Sink for CompareSink {
    fn segment(
        &mut self,
        view: &FeatureView,
        segment: &SegmentFile,
        rows: RecordBatch,
    ) -> Result<()> {
        let (streamed, index) = self.streamed(&view.name, segment)?;
        let check = self
            .checks
            .entry(view.name.clone())
            .or_insert_with(|| ViewCheck {
                view: view.name.clone(),
                features: view
                    .aggregations
                    .iter()
                    .map(|a| FeatureCheck {
                        name: a.name.clone(),
                        ..FeatureCheck::default()
                    })
                    .collect(),
                history_from: self.history_from,
                ..ViewCheck::default()
            });
        let log_removed = self
            .log_removed
            .get(&segment.id.partition)
            .copied()
            .unwrap_or(-1);
        let new_offsets = offsets(&rows)?;
        let times = rows
            .column_by_name(EVENT_TIME_COLUMN)
            .map(|c| Column::new(c.as_ref()))
            .ok_or_else(|| Error::Replay("recomputed rows without event_time".into()))?;
        let entity = rows
            .column_by_name(&view.entity)
            .map(|c| Column::new(c.as_ref()))
            .ok_or_else(|| Error::Replay("recomputed rows without the entity".into()))?;
        for row in 0..rows.num_rows() {
            if !times.int(row).is_some_and(|t| self.range.contains(t)) {
                continue;
            }
            let offset = new_offsets.value(row);
            let Some(&(b, r)) = index.get(&offset) else {
                if offset <= log_removed {
                    check.log_removed += 1;
                } else {
                    check.missing += 1;
                }
                continue;
            };
            check.events += 1;
            let old = &streamed[b];
            let time = times.int(row).unwrap_or(i64::MIN);
            for (agg, f) in view.aggregations.iter().zip(check.features.iter_mut()) {
                if self
                    .history_from
                    .is_some_and(|from| reaches_before(agg.window, time, from))
                {
                    f.beyond_history += 1;
                    continue;
                }
                let (Some(new_col), Some(old_col)) = (
                    rows.column_by_name(&agg.name),
                    old.column_by_name(&agg.name),
                ) else {
                    return Err(Error::Replay(format!(
                        "feature `{}` missing from the log of `{}` (was the view changed? \
                         backfill it first)",
                        agg.name, view.name
                    )));
                };
                let new = Column::new(new_col.as_ref()).value(row);
                let was = Column::new(old_col.as_ref()).value(r);
                f.compared += 1;
                if !values_agree(agg.op, &was, &new) {
                    f.mismatches += 1;
                    if f.examples.len() < EXAMPLES {
                        f.examples.push(format!(
                            "{}={} partition {} offset {offset}: streaming {was:?}, batch {new:?}",
                            view.entity,
                            entity.key(row),
                            segment.id.partition
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether the value of a window at event time `time` may include events at or before `from`
/// (a sliding window's tiles reach back up to one hop further than its size).
fn reaches_before(window: Window, time: i64, from: i64) -> bool {
    match window {
        Window::Lifetime => true,
        Window::Sliding { size, hop } => time.saturating_sub(size).saturating_sub(hop) <= from,
    }
}

/// Runs `quiver verify` over events with an event time in `range`: one replay per view, in
/// parallel threads. Call from a blocking thread of a Tokio runtime.
pub fn verify(
    handle: Handle,
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
    names: &[String],
    range: TimeRange,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<VerifyReport> {
    let offline = SegmentStore::open(&config.store.dir, Table::FeatureLog)?;
    let raw = SegmentStore::open(&config.store.dir, Table::Raw)?;
    let mut jobs = Vec::new();
    for (source, source_views) in views_by_source(catalog, views, names)? {
        let selected = segments_in_range(&handle, &config.store.dir, &source, range)?;
        let history_from = history_from(&raw, &source.name)?;
        for view in source_views {
            let log_removed: BTreeMap<i32, i64> = offline
                .dropped(&view.name)?
                .into_iter()
                .map(|(p, d)| (p, d.through))
                .collect();
            let mut by_partition: BTreeMap<i32, Vec<SegmentFile>> = BTreeMap::new();
            for segment in offline.segments(&view.name)? {
                by_partition
                    .entry(segment.id.partition)
                    .or_default()
                    .push(segment);
            }
            let removed = (log_removed, history_from);
            jobs.push((
                Arc::clone(&source),
                view,
                selected.clone(),
                by_partition,
                removed,
            ));
        }
    }
    let results = in_parallel(jobs, |(source, view, selected, logs, removed)| {
        let mut sink = CompareSink {
            handle: handle.clone(),
            ctx: crate::session(),
            range,
            logs: HashMap::from([(view.name.clone(), logs)]),
            log_removed: removed.0,
            history_from: removed.1,
            checks: HashMap::new(),
        };
        let replayed = Replay::of_view(
            handle.clone(),
            &config.store.dir,
            source,
            Arc::clone(&view),
            selected,
            &mut sink,
            progress,
        )?
        .run()?;
        let check = sink.checks.remove(&view.name).unwrap_or_else(|| ViewCheck {
            view: view.name.clone(),
            ..ViewCheck::default()
        });
        Ok((check, replayed))
    })?;
    let mut report = VerifyReport::default();
    for (check, replayed) in results {
        report.replays.insert(check.view.clone(), replayed);
        report.views.push(check);
    }
    Ok(report)
}

/// The newest event time retention removed from a source's raw store, if it removed any
/// event (a removal that did not record times counts as removing everything up to now).
pub fn history_from(raw: &SegmentStore, source: &str) -> Result<Option<i64>> {
    Ok(raw
        .dropped(source)?
        .values()
        .map(|d| d.event_time_max.unwrap_or(i64::MAX))
        .max()
        .filter(|&t| t > i64::MIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_compared_only_when_its_window_lies_after_the_removed_history() {
        let hour = 3_600_000_000;
        let w = Window::Sliding {
            size: hour,
            hop: 300_000_000,
        };
        let from = 10 * hour;
        assert!(reaches_before(Window::Lifetime, 100 * hour, from));
        assert!(
            reaches_before(w, 11 * hour, from),
            "its window starts at 10 h"
        );
        assert!(
            reaches_before(w, 11 * hour + 300_000_000, from),
            "one hop more is still the tile at 10 h"
        );
        assert!(!reaches_before(w, 11 * hour + 300_000_001, from));
        assert!(reaches_before(w, i64::MIN, from));
    }
}
