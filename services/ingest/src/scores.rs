//! Rows of the score store (table `scores`): one per prediction, Parquet, next to the raw store
//! and the feature log, named by the source partition and offset range like them.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quiver_core::SourceSchema;
use quiver_core::schema::{OFFSET_COLUMN, PARTITION_COLUMN, timestamp_type};

use crate::prediction::Verdict;

/// One prediction as stored.
#[derive(Debug, Clone)]
pub(crate) struct ScoreRow {
    pub(crate) event_id: String,
    pub(crate) keys: Vec<String>,
    pub(crate) verdict: Verdict,
    pub(crate) event_time: i64,
    pub(crate) prediction_time: i64,
    pub(crate) offset: i64,
    /// Re-emitted from a claim.
    pub(crate) replayed: bool,
    /// The prediction's `features` object, as JSON.
    pub(crate) features: String,
}

/// The score store's schema for a source.
pub(crate) fn schema(source: &SourceSchema) -> SchemaRef {
    let mut fields = vec![Field::new(
        source.id.as_deref().unwrap_or("event_id"),
        DataType::Utf8,
        false,
    )];
    fields.extend(
        source
            .keys
            .iter()
            .map(|k| Field::new(k, DataType::Utf8, true)),
    );
    fields.extend([
        Field::new("model_id", DataType::Utf8, false),
        Field::new("variant", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("decision", DataType::Boolean, false),
        Field::new("shadow_model_id", DataType::Utf8, true),
        Field::new("shadow_score", DataType::Float64, true),
        Field::new("shadow_decision", DataType::Boolean, true),
        Field::new("event_time", timestamp_type(), false),
        Field::new("prediction_time", timestamp_type(), false),
        Field::new(PARTITION_COLUMN, DataType::Int32, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
        Field::new("replayed", DataType::Boolean, false),
        Field::new("features", DataType::Utf8, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// The rows of one partition as a batch of [`schema`].
pub(crate) fn batch(
    schema: &SchemaRef,
    keys: usize,
    partition: i32,
    rows: &[ScoreRow],
) -> arrow::error::Result<RecordBatch> {
    let text = |f: &dyn Fn(&ScoreRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let mut columns: Vec<ArrayRef> = vec![text(&|r| r.event_id.as_str())];
    for k in 0..keys {
        columns.push(text(&|r| r.keys.get(k).map_or("", String::as_str)));
    }
    fn shadow(r: &ScoreRow) -> Option<&crate::prediction::ShadowVerdict> {
        r.verdict.shadow.as_ref()
    }
    columns.extend([
        text(&|r| r.verdict.model_id.as_str()),
        text(&|r| r.verdict.variant.as_str()),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.verdict.score),
        )) as ArrayRef,
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.verdict.decision)),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| shadow(r).map(|s| s.model_id.as_str())),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| shadow(r).map(|s| s.score)),
        )),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| shadow(r).map(|s| s.decision)),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.event_time))
                .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.prediction_time))
                .with_timezone("UTC"),
        ),
        Arc::new(Int32Array::from(vec![partition; rows.len()])),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.replayed)),
        )),
        text(&|r| r.features.as_str()),
    ]);
    RecordBatch::try_new(Arc::clone(schema), columns)
}
