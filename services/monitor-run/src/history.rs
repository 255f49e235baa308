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
        .ok_or_else(|| Error::Unreadable(format!("window end {end_us} µs is not a date")))?;
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
        count(OFFSET_COLUMN),
    ])
}

fn batch(start_us: i64, end_us: i64, end_ms: i64, rows: &[Row<'_>]) -> Result<RecordBatch> {
    let n = rows.len();
    let mut start = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut end = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut model = StringBuilder::new();
    let mut variant = StringBuilder::new();
    let mut deployed = StringBuilder::new();
    let mut counts: [Int64Builder; 5] = std::array::from_fn(|_| Int64Builder::with_capacity(n));
    let mut floats: [Float64Builder; 11] =
        std::array::from_fn(|_| Float64Builder::with_capacity(n));
    let mut drifted = StringBuilder::new();
    let mut drift = StringBuilder::new();
    let mut score_drifted = BooleanBuilder::with_capacity(n);
    for row in rows {
        let r = row.report;
        start.append_value(start_us);
        end.append_value(end_us);
        model.append_value(&r.model_id);
        variant.append_value(&r.variant);
        deployed.append_option(row.deployed_at);
        for (builder, value) in counts.iter_mut().zip([
            r.served,
            r.positive_decisions,
            r.labels_joined,
            r.labels_pending,
        ]) {
            builder.append_value(i64::try_from(value).unwrap_or(i64::MAX));
        }
        counts[4].append_value(end_ms);
        let realised = |f: fn(&Metrics) -> f64| r.realised.as_ref().map(f);
        for (builder, value) in floats.iter_mut().zip([
            r.latency.map(|l| l.p50_ms),
            r.latency.map(|l| l.p99_ms),
            r.drift_share,
            r.score_drift.map(|d| d.statistic),
            realised(|m| m.roc_auc),
            realised(|m| m.pr_auc),
            realised(|m| m.log_loss),
            realised(|m| m.precision),
            realised(|m| m.recall),
            r.estimated_roc_auc,
            Some(r.test.roc_auc),
        ]) {
            builder.append_option(value);
        }
        let names: Vec<&str> = r
            .drift
            .iter()
            .filter(|d| d.drift.drifted)
            .map(|d| d.feature.as_str())
            .collect();
        drifted.append_value(names.join(","));
        drift.append_value(
            serde_json::to_string(&r.drift).map_err(|e| Error::Unreadable(e.to_string()))?,
        );
        score_drifted.append_option(r.score_drift.map(|d| d.drifted));
    }
    let [served, positive, joined, pending, offset] = counts.map(|mut b| b.finish());
    let [
        p50,
        p99,
        share,
        score_drift,
        roc,
        pr,
        log_loss,
        precision,
        recall,
        estimated,
        test,
    ] = floats.map(|mut b| b.finish());
    let columns: Vec<ArrayRef> = vec![
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(model.finish()),
        Arc::new(variant.finish()),
        Arc::new(deployed.finish()),
        Arc::new(served),
        Arc::new(positive),
        Arc::new(p50),
        Arc::new(p99),
        Arc::new(share),
        Arc::new(drifted.finish()),
        Arc::new(drift.finish()),
        Arc::new(score_drift),
        Arc::new(score_drifted.finish()),
        Arc::new(joined),
        Arc::new(pending),
        Arc::new(roc),
        Arc::new(pr),
        Arc::new(log_loss),
        Arc::new(precision),
        Arc::new(recall),
        Arc::new(estimated),
        Arc::new(test),
        Arc::new(offset),
    ];
    Ok(RecordBatch::try_new(Arc::new(schema()), columns)?)
}

/// The monitor table of the store under `dir`.
pub fn open(dir: &std::path::Path) -> Result<SegmentStore> {
    Ok(SegmentStore::open(dir, Table::Monitor)?)
}
