//! `quiver store compact`: every stream of every table compacted by its table's retention
//! (`store.retention`) and the merge target (`store.compact_target_bytes`).

use chrono::{DateTime, Utc};
use quiver_core::config::RetentionConfig;
use quiver_core::{Catalog, Config};
use quiver_features::ViewCatalog;
use quiver_features::log::EVENT_TIME_COLUMN;
use quiver_store::compact::{Compacted, Policy};
use quiver_store::{MONITOR_STREAM, SegmentStore, Table};

use crate::Result;

/// How to run a compaction.
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// The time retention counts back from (now, except in tests).
    pub now: DateTime<Utc>,
}

/// One stream's compaction.
#[derive(Debug, Clone)]
pub struct StreamCompaction {
    /// `raw`, `log`, `scores` or `monitor`.
    pub table: &'static str,
    /// The source, view or monitor stream.
    pub stream: String,
    /// The table's retention setting.
    pub retention: String,
    /// What was (or, in a dry run, would be) done.
    pub done: Compacted,
}

impl StreamCompaction {
    /// One line for the progress output.
    pub fn line(&self, dry_run: bool) -> String {
        let d = &self.done;
        format!(
            "{}{:<7} {:<24} retention {:<5} dropped {} segment(s) ({:.1} MiB), merged {} into {}{}",
            if dry_run { "[dry run] " } else { "" },
            self.table,
            self.stream,
            self.retention,
            d.dropped,
            d.dropped_bytes as f64 / (1024.0 * 1024.0),
            d.merged_from,
            d.merged_into,
            if d.leftovers > 0 {
                format!(
                    ", removed {} left by an interrupted compaction",
                    d.leftovers
                )
            } else {
                String::new()
            }
        )
    }
}

/// Compacts every stream of every table; `progress` sees each stream as it is done.
pub fn compact(
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
    options: CompactOptions,
    progress: &dyn Fn(&StreamCompaction),
) -> Result<Vec<StreamCompaction>> {
    let retention = &config.store.retention;
    let mut streams: Vec<(&'static str, Table, &str, String, Option<String>)> = Vec::new();
    for source in &catalog.sources {
        streams.push((
            "raw",
            Table::Raw,
            &retention.raw,
            source.name.clone(),
            Some(source.event_time.clone()),
        ));
        streams.push((
            "scores",
            Table::Scores,
            &retention.scores,
            source.name.clone(),
            Some("event_time".to_string()),
        ));
    }
    for view in &views.views {
        streams.push((
            "log",
            Table::FeatureLog,
            &retention.log,
            view.name.clone(),
            Some(EVENT_TIME_COLUMN.to_string()),
        ));
    }
    streams.push((
        "monitor",
        Table::Monitor,
        &retention.monitor,
        MONITOR_STREAM.to_string(),
        None,
    ));
    let mut out = Vec::new();
    for (table_name, table, setting, stream, event_time) in streams {
        let store = SegmentStore::open(&config.store.dir, table)?;
        let policy = Policy {
            retention_us: RetentionConfig::micros(setting),
            target_bytes: config.store.compact_target_bytes,
        };
        let done = if options.dry_run {
            store.planned(&stream, &policy, options.now)?.summary()
        } else {
            store.compact(&stream, &policy, options.now, event_time.as_deref())?
        };
        let result = StreamCompaction {
            table: table_name,
            stream,
            retention: setting.to_string(),
            done,
        };
        progress(&result);
        out.push(result);
    }
    Ok(out)
}
