//! Internal events: each logs and counts in one place, with the names from
//! `quiver_telemetry::names`.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use quiver_telemetry::names;
use tracing::{debug, info, warn};

pub(crate) fn segment_written(
    source: &str,
    partition: i32,
    first: i64,
    last: i64,
    rows: usize,
    bytes: u64,
    took: Duration,
) {
    counter!(names::INGEST_EVENTS, "source" => source.to_string()).increment(rows as u64);
    counter!(names::INGEST_BYTES, "source" => source.to_string()).increment(bytes);
    counter!(names::INGEST_SEGMENTS, "source" => source.to_string()).increment(1);
    histogram!(names::INGEST_FLUSH_SECONDS, "source" => source.to_string())
        .record(took.as_secs_f64());
    debug!(
        source,
        partition,
        first,
        last,
        rows,
        bytes,
        took_ms = took.as_millis() as u64,
        "segment written"
    );
}

pub(crate) fn dead_letter(
    source: &str,
    partition: i32,
    offset: i64,
    reason: &'static str,
    detail: &str,
) {
    counter!(names::INGEST_DEAD_LETTERS, "source" => source.to_string(), "reason" => reason)
        .increment(1);
    debug!(source, partition, offset, reason, detail, "dead letter");
}

pub(crate) fn replay_skipped(source: &str, count: u64) {
    counter!(names::INGEST_REPLAY_SKIPPED, "source" => source.to_string()).increment(count);
}

pub(crate) fn flush_failed(
    source: &str,
    partition: i32,
    error: &dyn std::fmt::Display,
    retry_in: Duration,
) {
    counter!(names::INGEST_FLUSH_ERRORS, "source" => source.to_string()).increment(1);
    warn!(source, partition, error = %error, retry_in_ms = retry_in.as_millis() as u64, "segment flush failed; partition paused");
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
