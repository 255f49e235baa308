//! Every metric Quiver emits, named once. Services emit through these constants only.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Valid events written to the raw store. Labels: `source`.
pub const INGEST_EVENTS: &str = "quiver_ingest_events_total";
/// Payload bytes of valid events written. Labels: `source`.
pub const INGEST_BYTES: &str = "quiver_ingest_bytes_total";
/// Raw segments written. Labels: `source`.
pub const INGEST_SEGMENTS: &str = "quiver_ingest_segments_total";
/// Events sent to a dead-letter topic. Labels: `source`, `reason`.
pub const INGEST_DEAD_LETTERS: &str = "quiver_ingest_dead_letters_total";
/// Dead letters sent as a marker without their payload, too large for the dead-letter topic.
/// Labels: `topic` (the source topic).
pub const INGEST_DEAD_LETTERS_TRUNCATED: &str = "quiver_ingest_dead_letters_truncated_total";
/// Events skipped because the raw store already holds them (replays). Labels: `source`.
pub const INGEST_REPLAY_SKIPPED: &str = "quiver_ingest_replay_skipped_total";
/// Seconds of one durable flush of a partition (raw, feature-log and score segments, Redis
/// shards). Labels: `source`.
pub const INGEST_FLUSH_SECONDS: &str = "quiver_ingest_segment_flush_seconds";
/// Events consumed but not yet covered by a committed offset. Labels: `source`, `partition`.
pub const INGEST_COMMIT_LAG: &str = "quiver_ingest_commit_lag_events";
/// Offset commits. Labels: `result` (`ok` / `error`).
pub const INGEST_COMMITS: &str = "quiver_ingest_commits_total";
/// Partitions currently assigned to this process.
pub const INGEST_ASSIGNED_PARTITIONS: &str = "quiver_ingest_assigned_partitions";
/// Shards Redis held that could not be read (do not decode, or do not fit the view). Labels:
/// `view`, `action` (`rebuilt`: an owned partition's, rebuilt from the raw store; `ignored`:
/// another member's, left to its owner).
pub const INGEST_UNREADABLE_SHARDS: &str = "quiver_ingest_unreadable_shards_total";
/// Offsets below a partition's commit applied again because Redis lost shards it had
/// acknowledged (a crash between fsyncs, a failover to a lagging replica). Labels: `source`.
pub const INGEST_ONLINE_REPAIRED: &str = "quiver_ingest_online_repaired_offsets_total";

/// Events folded into online feature state. Labels: `view`.
pub const FEATURES_APPLIED: &str = "quiver_features_applied_total";
/// Events dropped from aggregation for lateness (still in the raw store). Labels: `view`.
pub const FEATURES_LATE: &str = "quiver_features_late_events_total";
/// Replayed events already in an entity's online state, skipped. Labels: `view`.
pub const FEATURES_REPLAY_SKIPPED: &str = "quiver_features_replay_skipped_total";
/// Rows written to the feature log. Labels: `view`.
pub const FEATURES_LOG_ROWS: &str = "quiver_features_log_rows_total";
/// Online feature requests. Labels: `route`, `status`.
pub const API_REQUESTS: &str = "quiver_api_requests_total";
/// Online feature request latency (seconds). Labels: `route`.
pub const API_LATENCY_SECONDS: &str = "quiver_api_request_seconds";
/// Predictions acknowledged by the broker. Labels: `model_id`, `variant`, `decision`.
pub const PREDICTIONS: &str = "quiver_predictions_total";
/// Predictions re-emitted from a claim (a replay repeats the recorded decision).
pub const PREDICTIONS_REPLAYED: &str = "quiver_predictions_replayed_total";
/// Events of scored sources that got no prediction. Labels: `reason` (`no_model`: none is
/// deployed; `replayed`: a replay past the state, with no claim recorded).
pub const EVENTS_UNSCORED: &str = "quiver_events_unscored_total";
/// Seconds from the event's broker timestamp to its prediction, by `stage`: `features` (decode,
/// state, vector), `score`, `produce` (claim recorded and handed to the producer), `total`
/// (acknowledged by the broker).
pub const PREDICTION_LATENCY_SECONDS: &str = "quiver_prediction_latency_seconds";
/// Deployment changes picked up from the registry.
pub const MODEL_RELOADS: &str = "quiver_model_reloads_total";
/// Entities held in the worker's state cache. Labels: `view`.
pub const STATE_CACHE_ENTITIES: &str = "quiver_state_cache_entities";
/// Entities read from Redis into the state cache (misses, refreshes). Labels: `view`.
pub const STATE_CACHE_LOADS: &str = "quiver_state_cache_loads_total";
/// Entities evicted from the state cache. Labels: `view`.
pub const STATE_CACHE_EVICTIONS: &str = "quiver_state_cache_evictions_total";
/// Shard writes to Redis. Labels: `view`, `result` (`written`, or `refused`: Redis held a later
/// state, written by the member that owns the partition now).
pub const SHARD_WRITES: &str = "quiver_shard_writes_total";
/// Claims another member recorded first, adopted instead of this member's decision. Labels:
/// `source`.
pub const CLAIMS_ADOPTED: &str = "quiver_claims_adopted_total";
/// Partitions stopped by a failure. Labels: `source`, `retry` (`transient`: retried with
/// backoff; `permanent`: stopped until restart).
pub const PARTITION_FAILURES: &str = "quiver_partition_failures_total";

/// When each deployed model entered its slot (Unix seconds), from the registry's timeline.
/// Labels: `model_id`, `variant`.
pub const MODEL_DEPLOYED_TIMESTAMP: &str = "quiver_model_deployed_timestamp_seconds";
/// Now minus the latest event time of each view's durable online state (seconds), per worker.
/// Labels: `view`.
pub const FEATURE_FRESHNESS_SECONDS: &str = "quiver_feature_freshness_seconds";
/// The smallest hop of a view's sliding windows (seconds), set at the worker's start: alert
/// when `quiver_feature_freshness_seconds` exceeds twice it. Labels: `view`.
pub const FEATURE_HOP_SECONDS: &str = "quiver_feature_hop_seconds";
/// 1 while the process is ready (what `/readyz` answers 200 for), 0 while it is not.
pub const READY: &str = "quiver_ready";
/// The last window's drift statistic of a model's input against its training baseline.
/// Labels: `model_id`, `feature`, `test` (`ks`, `z_test`, `chi_square`, `wasserstein`,
/// `jensen_shannon`).
pub const FEATURE_DRIFT_SCORE: &str = "quiver_feature_drift_score";
/// Whether that input drifted in the last window (0/1). Labels: `model_id`, `feature`.
pub const FEATURE_DRIFTED: &str = "quiver_feature_drifted";
/// Share of a model's inputs (lifetime aggregates left out) that drifted in the last window.
/// Labels: `model_id`.
pub const MODEL_DRIFT_SHARE: &str = "quiver_model_drift_share";
/// A model's performance over the last window. Labels: `model_id`, `metric` (`roc_auc`,
/// `pr_auc`, `log_loss`, `precision`, `recall`), `kind` (`realised` on the labels joined,
/// `estimated` from its scores, `test` on its test split).
pub const MODEL_PERFORMANCE: &str = "quiver_model_performance";
/// Labels joined to a model's predictions. Labels: `model_id`.
pub const LABELS_JOINED: &str = "quiver_labels_joined_total";
/// Predictions of a model in the last window. Labels: `model_id`, `variant`.
pub const MONITOR_WINDOW_PREDICTIONS: &str = "quiver_monitor_window_predictions";
/// Predictions still waiting for their label (at most `monitor.label_horizon` old).
pub const MONITOR_LABELS_PENDING: &str = "quiver_monitor_labels_pending";
/// Rows the monitor read off the stores. Labels: `stream` (`scores/<source>`, `raw/<labels>`),
/// `result` (`ok`, `repeated`: a replayed prediction, `unreadable`: not a prediction it
/// understands, `skipped`: a label row without id or label, `error`: a failed read).
pub const MONITOR_ROWS: &str = "quiver_monitor_rows_total";
/// Retraining jobs the monitor's policy ran. Labels: `result` (`trained`, `failed`).
pub const MONITOR_RETRAINS: &str = "quiver_monitor_retrains_total";
/// Evaluations of the window. Labels: `result` (`ok`, `error`).
pub const MONITOR_EVALUATIONS: &str = "quiver_monitor_evaluations_total";

/// Histogram buckets (seconds) for latencies.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Registers help texts.
pub(crate) fn describe() {
    describe_gauge!(
        FEATURE_HOP_SECONDS,
        Unit::Seconds,
        "Smallest hop of the view's sliding windows"
    );
    describe_gauge!(READY, "1 while the process is ready (/readyz 200), else 0");
    describe_counter!(
        FEATURES_APPLIED,
        Unit::Count,
        "Events folded into online feature state"
    );
    describe_counter!(
        FEATURES_LATE,
        Unit::Count,
        "Events dropped from aggregation for lateness"
    );
    describe_counter!(
        FEATURES_REPLAY_SKIPPED,
        Unit::Count,
        "Replayed events already in an entity's online state"
    );
    describe_counter!(
        FEATURES_LOG_ROWS,
        Unit::Count,
        "Rows written to the feature log"
    );
    describe_counter!(API_REQUESTS, Unit::Count, "Online feature requests");
    describe_histogram!(
        API_LATENCY_SECONDS,
        Unit::Seconds,
        "Online feature request latency"
    );
    describe_gauge!(
        MODEL_DEPLOYED_TIMESTAMP,
        Unit::Seconds,
        "When each deployed model entered its slot (Unix seconds)"
    );
    describe_gauge!(
        FEATURE_FRESHNESS_SECONDS,
        Unit::Seconds,
        "Now minus the latest event time of the view's durable online state"
    );
    describe_gauge!(
        FEATURE_DRIFT_SCORE,
        "Drift statistic of a model input against its training baseline (last window)"
    );
    describe_gauge!(
        FEATURE_DRIFTED,
        "Whether a model input drifted in the last window (0/1)"
    );
    describe_gauge!(
        MODEL_DRIFT_SHARE,
        "Share of a model's inputs that drifted in the last window"
    );
    describe_gauge!(
        MODEL_PERFORMANCE,
        "Model performance over the last window: realised, estimated, test split"
    );
    describe_counter!(
        LABELS_JOINED,
        Unit::Count,
        "Labels joined to a model's predictions"
    );
    describe_gauge!(
        MONITOR_WINDOW_PREDICTIONS,
        Unit::Count,
        "Predictions of a model in the last window"
    );
    describe_gauge!(
        MONITOR_LABELS_PENDING,
        Unit::Count,
        "Predictions waiting for their label"
    );
    describe_counter!(
        MONITOR_ROWS,
        Unit::Count,
        "Rows the monitor read off the stores, by stream and result"
    );
    describe_counter!(
        MONITOR_RETRAINS,
        Unit::Count,
        "Retraining jobs run by the monitor's policy"
    );
    describe_counter!(
        MONITOR_EVALUATIONS,
        Unit::Count,
        "Evaluations of the monitor's window"
    );
    describe_counter!(
        PREDICTIONS,
        Unit::Count,
        "Predictions acknowledged by the broker"
    );
    describe_counter!(
        PREDICTIONS_REPLAYED,
        Unit::Count,
        "Predictions re-emitted from a claim"
    );
    describe_counter!(
        EVENTS_UNSCORED,
        Unit::Count,
        "Events of scored sources without a prediction"
    );
    describe_histogram!(
        PREDICTION_LATENCY_SECONDS,
        Unit::Seconds,
        "Event broker timestamp to prediction, by stage"
    );
    describe_counter!(MODEL_RELOADS, Unit::Count, "Deployment changes picked up");
    describe_gauge!(
        STATE_CACHE_ENTITIES,
        Unit::Count,
        "Entities in the state cache"
    );
    describe_counter!(
        STATE_CACHE_LOADS,
        Unit::Count,
        "Entities read from Redis into the state cache"
    );
    describe_counter!(
        STATE_CACHE_EVICTIONS,
        Unit::Count,
        "Entities evicted from the state cache"
    );
    describe_counter!(SHARD_WRITES, Unit::Count, "Shard writes to Redis by result");
    describe_counter!(
        CLAIMS_ADOPTED,
        Unit::Count,
        "Claims of another member adopted"
    );
    describe_counter!(
        PARTITION_FAILURES,
        Unit::Count,
        "Partitions stopped by a failure"
    );
    describe_counter!(
        INGEST_EVENTS,
        Unit::Count,
        "Valid events written to the raw store"
    );
    describe_counter!(
        INGEST_BYTES,
        Unit::Bytes,
        "Payload bytes of valid events written to the raw store"
    );
    describe_counter!(INGEST_SEGMENTS, Unit::Count, "Raw-store segments written");
    describe_counter!(
        INGEST_DEAD_LETTERS,
        Unit::Count,
        "Events sent to a dead-letter topic, by reason"
    );
    describe_counter!(
        INGEST_DEAD_LETTERS_TRUNCATED,
        Unit::Count,
        "Dead letters sent as a marker without their payload (too large for the topic)"
    );
    describe_counter!(
        INGEST_REPLAY_SKIPPED,
        Unit::Count,
        "Replayed events skipped because already durable"
    );
    describe_histogram!(
        INGEST_FLUSH_SECONDS,
        Unit::Seconds,
        "Decode + dead-letter + durable write of one segment"
    );
    describe_gauge!(
        INGEST_COMMIT_LAG,
        Unit::Count,
        "Events consumed but not yet covered by a committed offset"
    );
    describe_counter!(INGEST_COMMITS, Unit::Count, "Offset commits by result");
    describe_gauge!(
        INGEST_ASSIGNED_PARTITIONS,
        Unit::Count,
        "Partitions assigned to this process"
    );
    describe_counter!(
        INGEST_UNREADABLE_SHARDS,
        Unit::Count,
        "Shards in Redis that could not be read, rebuilt from the raw store or left to their owner"
    );
    describe_counter!(
        INGEST_ONLINE_REPAIRED,
        Unit::Count,
        "Committed offsets applied again because Redis lost their shards"
    );
}

#[cfg(test)]
mod tests {
    /// Every metric named here is documented in docs/metrics.md (both files are compiled in:
    /// no I/O at test time).
    #[test]
    fn every_metric_is_documented() {
        let source = include_str!("names.rs");
        let docs = include_str!("../../../docs/metrics.md");
        let names: Vec<&str> = source
            .split('"')
            .filter(|s| s.len() > "quiver_".len() && s.starts_with("quiver_") && !s.contains(' '))
            .collect();
        assert!(names.len() > 30, "{names:?}");
        let missing: Vec<&&str> = names
            .iter()
            .filter(|n| !docs.contains(&format!("`{n}`")))
            .collect();
        assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    }
}
