//! Internal events: each one logs and counts in one place, with the names from
//! `quiver_telemetry::names`. Nothing else in the worker touches a metric.
#![allow(clippy::disallowed_macros)]

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use quiver_core::Retry;
use quiver_telemetry::names;
use tracing::{debug, error, info, warn};

use crate::prediction::Variant;

/// One durable flush of a partition finished.
pub(crate) struct Flushed<'a> {
    pub(crate) source: &'a str,
    pub(crate) partition: i32,
    pub(crate) first: i64,
    pub(crate) last: i64,
    pub(crate) raw_rows: usize,
    pub(crate) raw_bytes: u64,
    pub(crate) raw_segments: usize,
    pub(crate) took: Duration,
}

pub(crate) fn flushed(f: &Flushed<'_>) {
    let source = f.source.to_string();
    counter!(names::INGEST_EVENTS, "source" => source.clone()).increment(f.raw_rows as u64);
    counter!(names::INGEST_BYTES, "source" => source.clone()).increment(f.raw_bytes);
    counter!(names::INGEST_SEGMENTS, "source" => source.clone()).increment(f.raw_segments as u64);
    histogram!(names::INGEST_FLUSH_SECONDS, "source" => source).record(f.took.as_secs_f64());
    debug!(
        source = f.source,
        partition = f.partition,
        first = f.first,
        last = f.last,
        rows = f.raw_rows,
        bytes = f.raw_bytes,
        took_ms = f.took.as_millis() as u64,
        "durable flush"
    );
}

pub(crate) fn log_rows(view: &str, rows: usize) {
    counter!(names::FEATURES_LOG_ROWS, "view" => view.to_string()).increment(rows as u64);
}

pub(crate) fn shard_writes(view: &str, written: usize, refused: usize) {
    counter!(names::SHARD_WRITES, "view" => view.to_string(), "result" => "written")
        .increment(written as u64);
    if refused > 0 {
        counter!(names::SHARD_WRITES, "view" => view.to_string(), "result" => "refused")
            .increment(refused as u64);
        warn!(
            view,
            refused, "Redis held later shards (another member owns the partition now)"
        );
    }
}

pub(crate) fn dead_letter(source: &str, partition: i32, offset: i64, reason: &str, detail: &str) {
    counter!(names::INGEST_DEAD_LETTERS, "source" => source.to_string(), "reason" => reason.to_string())
        .increment(1);
    debug!(source, partition, offset, reason, detail, "dead letter");
}

/// A shard Redis holds for `entity` in `partition` cannot be read (`why`); an owned partition's
/// is rebuilt, another member's is left to it.
pub(crate) fn unreadable_shard(view: &str, entity: &str, partition: i32, why: &str, owned: bool) {
    let action = if owned { "rebuilt" } else { "ignored" };
    counter!(names::INGEST_UNREADABLE_SHARDS, "view" => view.to_string(), "action" => action)
        .increment(1);
    warn!(
        view,
        entity, partition, why, action, "a shard in Redis cannot be read"
    );
}

pub(crate) fn shard_rebuild_refused(view: &str, entity: &str, partition: i32, applied: i64) {
    warn!(
        view,
        entity,
        partition,
        applied,
        "Redis holds a later version of a shard it cannot read than the raw store rebuilds: the rebuilt one is used, Redis's left as it is"
    );
}

pub(crate) fn shard_rebuilt(
    view: &str,
    entity: &str,
    partition: i32,
    applied_offset: Option<i64>,
    events_read: usize,
    took: Duration,
) {
    info!(
        view,
        entity,
        partition,
        applied_offset,
        events_read,
        took_ms = took.as_millis() as u64,
        "shard rebuilt from the raw store"
    );
}

pub(crate) fn dead_letter_truncated(topic: &str, partition: i32, offset: i64, bytes: usize) {
    counter!(names::INGEST_DEAD_LETTERS_TRUNCATED, "topic" => topic.to_string()).increment(1);
    warn!(
        topic,
        partition,
        offset,
        bytes,
        "dead letter too large for its topic: sent as a marker without its payload"
    );
}

pub(crate) fn replay_skipped(source: &str, count: u64) {
    counter!(names::INGEST_REPLAY_SKIPPED, "source" => source.to_string()).increment(count);
}

pub(crate) fn features_applied(view: &str, applied: u64, late: u64, replayed: u64) {
    let view = view.to_string();
    counter!(names::FEATURES_APPLIED, "view" => view.clone()).increment(applied);
    if late > 0 {
        counter!(names::FEATURES_LATE, "view" => view.clone()).increment(late);
    }
    if replayed > 0 {
        counter!(names::FEATURES_REPLAY_SKIPPED, "view" => view).increment(replayed);
    }
}

pub(crate) fn prediction_acked(model_id: &str, variant: Variant, decision: bool, latency: f64) {
    counter!(
        names::PREDICTIONS,
        "model_id" => model_id.to_string(),
        "variant" => variant.as_str(),
        "decision" => if decision { "true" } else { "false" }
    )
    .increment(1);
    histogram!(names::PREDICTION_LATENCY_SECONDS, "stage" => "total").record(latency);
}

/// Stage latencies of one hot batch (seconds from the oldest event's broker timestamp).
pub(crate) fn hot_batch(features: f64, score: f64, produce: f64) {
    histogram!(names::PREDICTION_LATENCY_SECONDS, "stage" => "features").record(features);
    histogram!(names::PREDICTION_LATENCY_SECONDS, "stage" => "score").record(score);
    histogram!(names::PREDICTION_LATENCY_SECONDS, "stage" => "produce").record(produce);
}

pub(crate) fn predictions_replayed(count: u64) {
    counter!(names::PREDICTIONS_REPLAYED).increment(count);
}

pub(crate) fn unscored(reason: &'static str, count: u64) {
    counter!(names::EVENTS_UNSCORED, "reason" => reason).increment(count);
}

pub(crate) fn claims_adopted(source: &str, partition: i32, count: usize) {
    counter!(names::CLAIMS_ADOPTED, "source" => source.to_string()).increment(count as u64);
    warn!(
        source,
        partition, count, "another member claimed these events first; repeating its decisions"
    );
}

pub(crate) fn claims_fenced(source: &str, partition: i32, first: i64, last: i64) {
    warn!(
        source,
        partition,
        first,
        last,
        "these offsets are committed by another member: this one lost the partition and decides nothing for them"
    );
}

pub(crate) fn deployment_loaded(production: &str, canary: &str, shadow: &str) {
    counter!(names::MODEL_RELOADS).increment(1);
    info!(production, canary, shadow, "deployment loaded");
}

/// The smallest hop of each view's sliding windows (the freshness alert's yardstick).
pub(crate) fn view_hops(views: &quiver_features::ViewCatalog) {
    for view in &views.views {
        if let Some(hop) = view.smallest_hop() {
            gauge!(names::FEATURE_HOP_SECONDS, "view" => view.name.clone()).set(hop as f64 / 1e6);
        }
    }
}

/// Now minus the latest event time of a view's durable online state.
pub(crate) fn freshness(view: &str, seconds: f64) {
    gauge!(names::FEATURE_FRESHNESS_SECONDS, "view" => view.to_string()).set(seconds);
}

pub(crate) fn cache_size(view: &str, entities: usize) {
    gauge!(names::STATE_CACHE_ENTITIES, "view" => view.to_string()).set(entities as f64);
}

pub(crate) fn cache_loads(view: &str, count: usize) {
    counter!(names::STATE_CACHE_LOADS, "view" => view.to_string()).increment(count as u64);
}

pub(crate) fn cache_evictions(view: &str, count: usize) {
    counter!(names::STATE_CACHE_EVICTIONS, "view" => view.to_string()).increment(count as u64);
}

pub(crate) fn partition_failed(
    source: &str,
    partition: i32,
    error: &dyn std::fmt::Display,
    retry: Retry,
    retry_in: Duration,
) {
    let kind = match retry {
        Retry::Transient => "transient",
        Retry::Permanent => "permanent",
    };
    counter!(names::PARTITION_FAILURES, "source" => source.to_string(), "retry" => kind)
        .increment(1);
    match retry {
        Retry::Transient => warn!(
            source,
            partition,
            error = %error,
            retry_in_ms = retry_in.as_millis() as u64,
            "partition paused; it resumes from its last commit"
        ),
        Retry::Permanent => error!(
            source,
            partition,
            error = %error,
            "partition stopped: this cannot heal by retrying; fix the cause and restart the worker"
        ),
    }
}

/// Redis holds less of a partition's shards than its commit covers: the partition resumes at
/// `from`, below `committed`.
pub(crate) fn online_state_behind(
    source: &str,
    partition: i32,
    views: &[&str],
    applied: &[Option<i64>],
    from: i64,
    committed: i64,
) {
    counter!(names::INGEST_ONLINE_REPAIRED, "source" => source.to_string())
        .increment((committed - from).max(0) as u64);
    let held: Vec<String> = views
        .iter()
        .zip(applied)
        .map(|(v, a)| format!("{v}:{}", a.map_or("none".to_string(), |a| a.to_string())))
        .collect();
    warn!(
        source,
        partition,
        from,
        committed,
        held = %held.join(","),
        "Redis lost shards below the commit: re-applying them (online state only)"
    );
}

pub(crate) fn partition_resumed(source: &str, partition: i32, from: i64, committed: Option<i64>) {
    info!(source, partition, from, committed, "partition resumed");
}

pub(crate) fn committed(ok: bool, partitions: usize, error: Option<&dyn std::fmt::Display>) {
    counter!(names::INGEST_COMMITS, "result" => if ok { "ok" } else { "error" }).increment(1);
    match error {
        Some(error) => warn!(partitions, error = %error, "offset commit failed; will retry"),
        None => debug!(partitions, "offsets committed"),
    }
}

pub(crate) fn commit_lag(source: &str, partition: i32, lag: i64) {
    gauge!(names::INGEST_COMMIT_LAG, "source" => source.to_string(), "partition" => partition.to_string()).set(lag as f64);
}

pub(crate) fn assignment(kind: &'static str, partitions: &[(String, i32)], total: usize) {
    gauge!(names::INGEST_ASSIGNED_PARTITIONS).set(total as f64);
    let list: Vec<String> = partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect();
    info!(kind, partitions = %list.join(","), assigned = total, "rebalance");
}
