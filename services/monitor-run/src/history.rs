//! The `monitor` table: one row per deployed model and evaluation, appended as a Parquet segment
//! named by the window's end, so a restarted monitor never writes an evaluation twice and any
//! Parquet reader (or `quiver sql "SELECT * FROM monitor"`) reads the history.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use quiver_core::schema::OFFSET_COLUMN;
use quiver_models::metrics::Metrics;
use quiver_monitor::ModelReport;
use quiver_store::{SegmentId, SegmentStore, Table};

use crate::{Error, Result};

/// One evaluated model: its report and where it stands.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    /// The report over the window.
    pub report: &'a ModelReport,
    /// When it entered its slot (RFC 3339), if the registry's timeline says.
    pub deployed_at: Option<&'a str>,
    /// Each view's freshness at the window's end (s): now − its latest event time.
    pub freshness: &'a std::collections::BTreeMap<&'a str, f64>,
}

/// Appends one evaluation (the window `[start_us, end_us)`) to the monitor table.
pub fn append(store: &SegmentStore, start_us: i64, end_us: i64, rows: &[Row<'_>]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let end_ms = end_us.div_euclid(1_000);
    let batch = batch(start_us, end_us, end_ms, rows)?;
    let date = chrono::DateTime::from_timestamp_micros(end_us)
        .map(|t| t.date_naive())
        .ok_or_else(|| Error::History(format!("window end {end_us} µs is not a date")))?;
    let id = SegmentId {
        partition: 0,
        first_offset: end_ms,
        last_offset: end_ms,
    };
    store.append(quiver_store::MONITOR_STREAM, date, id, &batch)?;
    Ok(())
}

/// The table's schema (documented in docs/monitoring.md).
pub fn schema() -> Schema {
    let time = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let float = |name: &str| Field::new(name, DataType::Float64, true);
    let count = |name: &str| Field::new(name, DataType::Int64, false);
    Schema::new(vec![
        Field::new("window_start", time(), false),
        Field::new("window_end", time(), false),
        Field::new("model_id", DataType::Utf8, false),
        Field::new("variant", DataType::Utf8, false),
        Field::new("deployed_at", DataType::Utf8, true),
        count("served"),
        count("positive_decisions"),
        float("latency_p50_ms"),
        float("latency_p99_ms"),
        float("drift_share"),
        Field::new("drifted_features", DataType::Utf8, false),
        Field::new("drift", DataType::Utf8, false),
        float("score_drift"),
        Field::new("score_drifted", DataType::Boolean, true),
        count("labels_joined"),
        count("labels_pending"),
        float("realised_roc_auc"),
        float("realised_pr_auc"),
        float("realised_log_loss"),
        float("realised_precision"),
        float("realised_recall"),
        float("estimated_roc_auc"),
        float("test_roc_auc"),
        Field::new("freshness", DataType::Utf8, false),
        count(OFFSET_COLUMN),
    ])
}

fn batch(start_us: i64, end_us: i64, end_ms: i64, rows: &[Row<'_>]) -> Result<RecordBatch> {
    let mut columns = Columns::default();
    for row in rows {
        columns.push(start_us, end_us, end_ms, row)?;
    }
    Ok(RecordBatch::try_new(Arc::new(schema()), columns.finish())?)
}

/// The table's columns being built, one builder per column of [`schema`], by name.
#[derive(Default)]
struct Columns {
    window_start: TimestampMicrosecondBuilder,
    window_end: TimestampMicrosecondBuilder,
    model_id: StringBuilder,
    variant: StringBuilder,
    deployed_at: StringBuilder,
    served: Int64Builder,
    positive_decisions: Int64Builder,
    latency_p50_ms: Float64Builder,
    latency_p99_ms: Float64Builder,
    drift_share: Float64Builder,
    drifted_features: StringBuilder,
    drift: StringBuilder,
    score_drift: Float64Builder,
    score_drifted: BooleanBuilder,
    labels_joined: Int64Builder,
    labels_pending: Int64Builder,
    realised_roc_auc: Float64Builder,
    realised_pr_auc: Float64Builder,
    realised_log_loss: Float64Builder,
    realised_precision: Float64Builder,
    realised_recall: Float64Builder,
    estimated_roc_auc: Float64Builder,
    test_roc_auc: Float64Builder,
    freshness: StringBuilder,
    offset: Int64Builder,
}

impl Columns {
    fn push(&mut self, start_us: i64, end_us: i64, end_ms: i64, row: &Row<'_>) -> Result<()> {
        let r = row.report;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let realised = |f: fn(&Metrics) -> f64| r.realised.as_ref().map(f);
        self.window_start.append_value(start_us);
        self.window_end.append_value(end_us);
        self.model_id.append_value(&r.model_id);
        self.variant.append_value(&r.variant);
        self.deployed_at.append_option(row.deployed_at);
        self.served.append_value(count(r.served));
        self.positive_decisions
            .append_value(count(r.positive_decisions));
        self.latency_p50_ms
            .append_option(r.latency.map(|l| l.p50_ms));
        self.latency_p99_ms
            .append_option(r.latency.map(|l| l.p99_ms));
        self.drift_share.append_option(r.drift_share);
        let drifted: Vec<&str> = r.drifted().map(|d| d.feature.as_str()).collect();
        self.drifted_features.append_value(drifted.join(","));
        let drift = serde_json::to_string(&r.drift).map_err(|e| Error::History(e.to_string()))?;
        self.drift.append_value(drift);
        self.score_drift
            .append_option(r.score_drift.map(|d| d.statistic));
        self.score_drifted
            .append_option(r.score_drift.map(|d| d.drifted));
        self.labels_joined.append_value(count(r.labels_joined));
        self.labels_pending.append_value(count(r.labels_pending));
        self.realised_roc_auc.append_option(realised(|m| m.roc_auc));
        self.realised_pr_auc.append_option(realised(|m| m.pr_auc));
        self.realised_log_loss
            .append_option(realised(|m| m.log_loss));
        self.realised_precision
            .append_option(realised(|m| m.precision));
        self.realised_recall.append_option(realised(|m| m.recall));
        self.estimated_roc_auc.append_option(r.estimated_roc_auc);
        self.test_roc_auc.append_value(r.test.roc_auc);
        let freshness =
            serde_json::to_string(row.freshness).map_err(|e| Error::History(e.to_string()))?;
        self.freshness.append_value(freshness);
        self.offset.append_value(end_ms);
        Ok(())
    }

    /// The arrays, in [`schema`]'s order.
    fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.window_start.finish().with_timezone("UTC")),
            Arc::new(self.window_end.finish().with_timezone("UTC")),
            Arc::new(self.model_id.finish()),
            Arc::new(self.variant.finish()),
            Arc::new(self.deployed_at.finish()),
            Arc::new(self.served.finish()),
            Arc::new(self.positive_decisions.finish()),
            Arc::new(self.latency_p50_ms.finish()),
            Arc::new(self.latency_p99_ms.finish()),
            Arc::new(self.drift_share.finish()),
            Arc::new(self.drifted_features.finish()),
            Arc::new(self.drift.finish()),
            Arc::new(self.score_drift.finish()),
            Arc::new(self.score_drifted.finish()),
            Arc::new(self.labels_joined.finish()),
            Arc::new(self.labels_pending.finish()),
            Arc::new(self.realised_roc_auc.finish()),
            Arc::new(self.realised_pr_auc.finish()),
            Arc::new(self.realised_log_loss.finish()),
            Arc::new(self.realised_precision.finish()),
            Arc::new(self.realised_recall.finish()),
            Arc::new(self.estimated_roc_auc.finish()),
            Arc::new(self.test_roc_auc.finish()),
            Arc::new(self.freshness.finish()),
            Arc::new(self.offset.finish()),
        ]
    }
}

/// The monitor table of the store under `dir`.
pub fn open(dir: &std::path::Path) -> Result<SegmentStore> {
    Ok(SegmentStore::open(dir, Table::Monitor)?)
}
