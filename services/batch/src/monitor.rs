//! The predictions of a window as monitoring observes them: the score store's rows (model,
//! variant, score, decision, the features scored, event and prediction times) joined by event
//! id with the labels that arrived in a label source's raw store.

use std::collections::BTreeMap;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::DataType;
use quiver_core::SourceSchema;
use quiver_features::Value;
use quiver_monitor::Observation;

use crate::{Error, Result, Stores};

/// One prediction of the window, with the model that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The deciding model.
    pub model_id: String,
    /// `production`, `canary` or `shadow`.
    pub variant: String,
    /// What monitoring reads of it.
    pub observation: Observation,
}

/// Where the labels come from: a source with the scored source's event id and a boolean.
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    /// The label source.
    pub source: &'a SourceSchema,
    /// Its boolean column (`None`: its only boolean field).
    pub column: Option<&'a str>,
}

/// The predictions of `scored` made at or after `since_us` (µs since the epoch), each with its
/// label if one arrived: the deciding model's (production or canary) and the shadow's, whose
/// decision is its score at `shadow_threshold` (the shadow model and its threshold; without
/// one a shadow's decisions count as negative). Every call scans the whole score store and
/// label store (the `date=` directories are not pruned yet).
pub async fn observations(
    stores: &Stores,
    scored: &SourceSchema,
    labels: &Labels<'_>,
    since_us: i64,
    shadow_threshold: Option<(&str, f64)>,
) -> Result<Vec<Observed>> {
    let id = scored.id.as_deref().ok_or_else(|| {
        Error::Invalid(format!(
            "source `{}` declares no event id: predictions cannot be joined with labels",
            scored.name
        ))
    })?;
    let scores = format!("scores_{}", scored.name);
    if !registered(stores, &scores) {
        return Ok(Vec::new());
    }
    let label_table = format!("raw_{}", labels.source.name);
    let label = if registered(stores, &label_table) {
        let column = label_column(labels)?;
        let label_id = labels.source.id.as_deref().ok_or_else(|| {
            Error::Invalid(format!(
                "label source `{}` declares no event id to join predictions on",
                labels.source.name
            ))
        })?;
        format!(
            "(SELECT \"{label_id}\" AS label_id, bool_or(\"{column}\") AS label FROM \"{label_table}\" GROUP BY 1)"
        )
    } else {
        "(SELECT CAST(NULL AS VARCHAR) AS label_id, CAST(NULL AS BOOLEAN) AS label)".to_string()
    };
    // The deciding model's rows, then the shadow's (its decision: its score at its threshold).
    let shadow_decision = match shadow_threshold {
        Some((model, threshold)) => format!(
            "CASE WHEN shadow_model_id = '{}' THEN shadow_score >= {threshold:?} ELSE false END",
            model.replace('\'', "''")
        ),
        None => "false".to_string(),
    };
    let query = format!(
        "WITH w AS (\
           SELECT s.*, l.label, \
             CAST(s.prediction_time AS BIGINT) - CAST(s.event_time AS BIGINT) AS latency_us \
           FROM \"{scores}\" s LEFT JOIN {label} l ON s.\"{id}\" = l.label_id \
           WHERE CAST(s.prediction_time AS BIGINT) >= {since_us}) \
         SELECT model_id, variant, score, decision, features, label, latency_us FROM w \
         UNION ALL \
         SELECT shadow_model_id, 'shadow', shadow_score, {shadow_decision}, features, label, \
           latency_us FROM w WHERE shadow_model_id IS NOT NULL"
    );
    let batches = crate::collect(stores.sql(&query).await?).await?;
    let mut out = Vec::new();
    for batch in &batches {
        read_batch(batch, &mut out)?;
    }
    Ok(out)
}

/// Whether `table` is registered (it has data).
pub fn registered(stores: &Stores, table: &str) -> bool {
    stores.tables.iter().any(|(name, _)| name == table)
}

fn label_column(labels: &Labels<'_>) -> Result<String> {
    labels
        .source
        .label_column(labels.column)
        .map_err(|e| Error::Invalid(format!("{e} (--label-column)")))
}

/// A named column of a query result, as `T`.
fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::Invalid(format!("the score store has no usable `{name}` column")))
}

fn read_batch(batch: &RecordBatch, out: &mut Vec<Observed>) -> Result<()> {
    let model = column::<StringArray>(batch, "model_id")?;
    let variant = column::<StringArray>(batch, "variant")?;
    let score = column::<Float64Array>(batch, "score")?;
    let decision = column::<BooleanArray>(batch, "decision")?;
    let features = column::<StringArray>(batch, "features")?;
    let latency = column::<Int64Array>(batch, "latency_us")?;
    let label = batch
        .column_by_name("label")
        .filter(|c| c.data_type() == &DataType::Boolean)
        .map(|c| c.as_boolean());
    for row in 0..batch.num_rows() {
        out.push(Observed {
            model_id: model.value(row).to_string(),
            variant: variant.value(row).to_string(),
            observation: Observation {
                score: score.value(row),
                decision: decision.value(row),
                features: parse_features(features.value(row))?,
                label: label.filter(|l| l.is_valid(row)).map(|l| l.value(row)),
                latency_ms: latency.value(row) as f64 / 1_000.0,
            },
        });
    }
    Ok(())
}

/// A prediction's `features` object (as the score store keeps it) as values by name.
fn parse_features(text: &str) -> Result<BTreeMap<String, Value>> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| {
            Error::Invalid(format!(
                "a prediction's features are not a JSON object: {e}"
            ))
        })?;
    Ok(object
        .into_iter()
        .map(|(name, v)| {
            let value = match v {
                serde_json::Value::Bool(b) => Value::Bool(b),
                serde_json::Value::Number(n) => n.as_f64().map_or(Value::Null, Value::Float),
                serde_json::Value::String(s) => Value::Str(s),
                _ => Value::Null,
            };
            (name, value)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_read_as_values_and_garbage_is_an_error() {
        let parsed =
            parse_features(r#"{"v__a": 1.5, "v__b": "FR", "v__c": null, "v__d": true, "v__e": 3}"#)
                .unwrap();
        assert_eq!(parsed["v__a"], Value::Float(1.5));
        assert_eq!(parsed["v__b"], Value::Str("FR".into()));
        assert_eq!(parsed["v__c"], Value::Null);
        assert_eq!(parsed["v__d"], Value::Bool(true));
        assert_eq!(parsed["v__e"], Value::Float(3.0));
        assert!(parse_features("[1]").is_err());
    }
}
