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
/// Events skipped because the raw store already holds them (replays). Labels: `source`.
pub const INGEST_REPLAY_SKIPPED: &str = "quiver_ingest_replay_skipped_total";
/// Seconds to decode, dead-letter and durably write one segment. Labels: `source`.
pub const INGEST_FLUSH_SECONDS: &str = "quiver_ingest_segment_flush_seconds";
/// Events consumed but not yet covered by a committed offset. Labels: `source`, `partition`.
pub const INGEST_COMMIT_LAG: &str = "quiver_ingest_commit_lag_events";
/// Offset commits. Labels: `result` (`ok` / `error`).
pub const INGEST_COMMITS: &str = "quiver_ingest_commits_total";
/// Segment flushes that failed and will be retried. Labels: `source`.
pub const INGEST_FLUSH_ERRORS: &str = "quiver_ingest_flush_errors_total";
/// Partitions currently assigned to this process.
pub const INGEST_ASSIGNED_PARTITIONS: &str = "quiver_ingest_assigned_partitions";

/// Events folded into online feature state. Labels: `view`.
pub const FEATURES_APPLIED: &str = "quiver_features_applied_total";
/// Events dropped from aggregation for lateness (still in the raw store). Labels: `view`.
pub const FEATURES_LATE: &str = "quiver_features_late_events_total";
/// Replayed events already in an entity's online state, skipped. Labels: `view`.
pub const FEATURES_REPLAY_SKIPPED: &str = "quiver_features_replay_skipped_total";
/// Rows written to the offline feature log. Labels: `view`.
pub const FEATURES_LOG_ROWS: &str = "quiver_features_log_rows_total";
/// Seconds to compute one micro-batch's features and write Redis + the feature log. Labels: `view`.
pub const FEATURES_BATCH_SECONDS: &str = "quiver_features_batch_seconds";
/// Online feature requests. Labels: `route`, `status`.
pub const API_REQUESTS: &str = "quiver_api_requests_total";
/// Online feature request latency (seconds). Labels: `route`.
pub const API_LATENCY_SECONDS: &str = "quiver_api_request_seconds";
/// Predictions emitted (acknowledged by the broker). Labels: `model`, `variant`.
pub const SCORE_PREDICTIONS: &str = "quiver_score_predictions_total";
/// Events whose prediction was already made (a replay): the stored one is re-emitted.
pub const SCORE_REPLAYED: &str = "quiver_score_replayed_total";
/// Events the scorer could not decode (they reach the dead-letter topic through ingest).
pub const SCORE_MALFORMED: &str = "quiver_score_malformed_total";
/// Vectors read back from the feature log (the scorer was behind ingest). Labels: `view`.
pub const SCORE_FROM_LOG: &str = "quiver_score_vectors_from_log_total";
/// Vectors assembled without a guarantee (ingest did not catch up in time). Labels: `view`.
pub const SCORE_FALLBACK: &str = "quiver_score_vector_fallbacks_total";
/// Event (broker timestamp) to prediction produced, in seconds.
pub const SCORE_LATENCY_SECONDS: &str = "quiver_score_latency_seconds";
/// Deployment changes picked up from the registry.
pub const SCORE_MODEL_RELOADS: &str = "quiver_score_model_reloads_total";

/// Histogram buckets (seconds) for latencies.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Registers help texts.
pub(crate) fn describe() {
    describe_counter!(
        SCORE_PREDICTIONS,
        Unit::Count,
        "Predictions acknowledged by the broker"
    );
    describe_counter!(SCORE_REPLAYED, Unit::Count, "Replayed events re-emitted");
    describe_counter!(
        SCORE_MALFORMED,
        Unit::Count,
        "Events the scorer skipped as malformed"
    );
    describe_counter!(
        SCORE_FROM_LOG,
        Unit::Count,
        "Vectors read from the feature log"
    );
    describe_counter!(
        SCORE_FALLBACK,
        Unit::Count,
        "Vectors assembled without a guarantee"
    );
    describe_histogram!(
        SCORE_LATENCY_SECONDS,
        Unit::Seconds,
        "Event timestamp to prediction produced"
    );
    describe_counter!(
        SCORE_MODEL_RELOADS,
        Unit::Count,
        "Deployment changes picked up"
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
    describe_counter!(
        INGEST_FLUSH_ERRORS,
        Unit::Count,
        "Segment flushes that failed and are retried"
    );
    describe_gauge!(
        INGEST_ASSIGNED_PARTITIONS,
        Unit::Count,
        "Partitions assigned to this process"
    );
}
