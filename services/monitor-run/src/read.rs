//! What the monitor reads off the stores: the score store's rows (one per prediction, as the
//! worker wrote it) and the label source's raw rows. Pure — a batch in, rows out — so every
//! shape a segment can have is unit-tested; columns are found by name, never by position.

use arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::TimestampMicrosecondType;
use quiver_features::Value;
use quiver_monitor::tracker::{Seen, Slot, Verdict};
use serde_json::{Map, Value as Json};

use crate::{Error, Result};

/// The score store's columns the monitor reads (besides the source's event id).
pub const SCORE_COLUMNS: [&str; 10] = [
    "model_id",
    "variant",
    "score",
    "decision",
    "shadow_model_id",
    "shadow_score",
    "shadow_decision",
    "event_time",
    "prediction_time",
    "features",
];

/// A score-store segment's rows, typed: read a row's prediction with [`Scores::seen`] and its
/// inputs (parsed only when asked) with [`Scores::inputs`].
#[derive(Debug)]
pub struct Scores<'a> {
    ids: &'a StringArray,
    model_id: &'a StringArray,
    variant: &'a StringArray,
    score: &'a Float64Array,
    decision: &'a BooleanArray,
    shadow: Option<(&'a StringArray, &'a Float64Array, &'a BooleanArray)>,
    event_time: &'a TimestampMicrosecondArray,
    prediction_time: &'a TimestampMicrosecondArray,
    features: &'a StringArray,
}

impl<'a> Scores<'a> {
    /// The typed columns of `batch`, whose event id column is `id`. A segment written before
    /// shadow decisions were stored has no shadow columns read: its shadow verdicts are left
    /// out, not guessed.
    pub fn new(batch: &'a RecordBatch, id: &str) -> Result<Self> {
        let shadow_columns = ["shadow_model_id", "shadow_score", "shadow_decision"];
        let shadow = if shadow_columns
            .iter()
            .all(|c| batch.column_by_name(c).is_some())
        {
            Some((
                strings(batch, "shadow_model_id")?,
                floats(batch, "shadow_score")?,
                bools(batch, "shadow_decision")?,
            ))
        } else {
            None
        };
        Ok(Self {
            ids: strings(batch, id)?,
            model_id: strings(batch, "model_id")?,
            variant: strings(batch, "variant")?,
            score: floats(batch, "score")?,
            decision: bools(batch, "decision")?,
            shadow,
            event_time: times(batch, "event_time")?,
            prediction_time: times(batch, "prediction_time")?,
            features: strings(batch, "features")?,
        })
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Row `i` as the tracker takes it.
    pub fn seen(&self, i: usize) -> Result<Seen> {
        let text = |a: &StringArray, name: &str| {
            a.is_valid(i)
                .then(|| a.value(i).to_string())
                .ok_or_else(|| unreadable("a null", name))
        };
        let model_id = text(self.model_id, "model_id")?;
        let score = self.score.is_valid(i).then(|| self.score.value(i));
        let score = score
            .filter(|s| s.is_finite())
            .ok_or_else(|| unreadable("no finite `score`", &model_id))?;
        let decision = (self.decision.is_valid(i))
            .then(|| self.decision.value(i))
            .ok_or_else(|| unreadable("a null", "decision"))?;
        let mut verdicts = vec![Verdict {
            slot: Slot {
                model_id,
                variant: text(self.variant, "variant")?,
            },
            score,
            decision,
        }];
        if let Some((model, score, decision)) = self.shadow
            && model.is_valid(i)
        {
            let score = (score.is_valid(i))
                .then(|| score.value(i))
                .filter(|s| s.is_finite())
                .ok_or_else(|| unreadable("no finite `shadow_score`", model.value(i)))?;
            let decision = (decision.is_valid(i))
                .then(|| decision.value(i))
                .ok_or_else(|| unreadable("a null", "shadow_decision"))?;
            verdicts.push(Verdict {
                slot: Slot {
                    model_id: model.value(i).to_string(),
                    variant: "shadow".to_string(),
                },
                score,
                decision,
            });
        }
        let time = |a: &TimestampMicrosecondArray, name: &str| {
            a.is_valid(i)
                .then(|| a.value(i))
                .ok_or_else(|| unreadable("a null", name))
        };
        let event_time = time(self.event_time, "event_time")?;
        let prediction_time = time(self.prediction_time, "prediction_time")?;
        Ok(Seen {
            event_id: text(self.ids, "the event id")?,
            verdicts,
            prediction_time_us: prediction_time,
            latency_ms: (prediction_time - event_time) as f64 / 1_000.0,
        })
    }

    /// Row `i`'s inputs (`<view>__<feature>` → value), from its `features` JSON object; an
    /// unreadable object gives no inputs (the row still counts everywhere else).
    pub fn inputs(&self, i: usize) -> Vec<(String, Value)> {
        if !self.features.is_valid(i) {
            return Vec::new();
        }
        match serde_json::from_str::<Map<String, Json>>(self.features.value(i)) {
            Ok(object) => object.into_iter().map(|(n, v)| (n, value(&v))).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The labels of a raw-store batch of the label source: `(event id, label)`, and how many rows
/// had no id or no label (skipped).
pub fn labels(batch: &RecordBatch, id: &str, label: &str) -> Result<(Vec<(String, bool)>, u64)> {
    let ids = strings(batch, id)?;
    let values = bools(batch, label)?;
    let mut out = Vec::with_capacity(ids.len());
    let mut skipped = 0;
    for i in 0..ids.len() {
        if ids.is_valid(i) && values.is_valid(i) {
            out.push((ids.value(i).to_string(), values.value(i)));
        } else {
            skipped += 1;
        }
    }
    Ok((out, skipped))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| unreadable("no column", name))
}

/// Column `name` of `batch` as strings (an error names it when it is missing or not that).
fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    column(batch, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| unreadable("not a string column", name))
}

fn floats<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Float64Array> {
    column(batch, name)?
        .as_primitive_opt()
        .ok_or_else(|| unreadable("not a float64 column", name))
}

fn bools<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a BooleanArray> {
    column(batch, name)?
        .as_boolean_opt()
        .ok_or_else(|| unreadable("not a boolean column", name))
}

fn times<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a TimestampMicrosecondArray> {
    column(batch, name)?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| unreadable("not a µs timestamp column", name))
}

fn value(v: &Json) -> Value {
    match v {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => n.as_f64().map_or(Value::Null, Value::Float),
        Json::String(s) => Value::Str(s.clone()),
        _ => Value::Null,
    }
}

fn unreadable(what: &str, detail: &str) -> Error {
    Error::Unreadable(if detail.is_empty() {
        what.to_string()
    } else {
        format!("{what} ({detail})")
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::ArrayRef;

    use super::*;

    fn batch(shadow: bool, score: Option<f64>) -> RecordBatch {
        let t = |us: i64| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(vec![us]).with_timezone("UTC"))
        };
        let mut columns: Vec<(&str, ArrayRef)> = vec![
            ("txn_id", Arc::new(StringArray::from(vec!["t1"]))),
            ("model_id", Arc::new(StringArray::from(vec!["m1"]))),
            ("variant", Arc::new(StringArray::from(vec!["canary"]))),
            ("score", Arc::new(Float64Array::from(vec![score]))),
            ("decision", Arc::new(BooleanArray::from(vec![false]))),
            ("event_time", t(1_000_000)),
            ("prediction_time", t(1_020_000)),
            (
                "features",
                Arc::new(StringArray::from(vec![
                    r#"{"v__amount":12.5,"v__country":"FR","v__none":null,"v__flag":true}"#,
                ])),
            ),
        ];
        if shadow {
            columns.extend([
                (
                    "shadow_model_id",
                    Arc::new(StringArray::from(vec![Some("m2")])) as ArrayRef,
                ),
                (
                    "shadow_score",
                    Arc::new(Float64Array::from(vec![Some(0.75)])),
                ),
                (
                    "shadow_decision",
                    Arc::new(BooleanArray::from(vec![Some(true)])),
                ),
            ]);
        }
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn a_score_row_reads_with_its_shadow_latency_and_inputs() {
        let batch = batch(true, Some(0.25));
        let scores = Scores::new(&batch, "txn_id").unwrap();
        assert_eq!(scores.len(), 1);
        let seen = scores.seen(0).unwrap();
        assert_eq!(seen.event_id, "t1");
        assert_eq!(seen.verdicts.len(), 2);
        assert_eq!(seen.verdicts[0].slot.variant, "canary");
        assert_eq!(seen.verdicts[0].score, 0.25);
        assert_eq!(
            (
                seen.verdicts[1].slot.model_id.as_str(),
                seen.verdicts[1].slot.variant.as_str()
            ),
            ("m2", "shadow")
        );
        assert!(seen.verdicts[1].decision);
        assert_eq!(seen.latency_ms, 20.0);
        assert_eq!(
            scores.inputs(0),
            vec![
                ("v__amount".to_string(), Value::Float(12.5)),
                ("v__country".to_string(), Value::Str("FR".into())),
                ("v__none".to_string(), Value::Null),
                ("v__flag".to_string(), Value::Bool(true)),
            ]
        );
    }

    #[test]
    fn a_segment_without_shadow_columns_reads_without_shadow_verdicts() {
        let batch = batch(false, Some(0.25));
        let seen = Scores::new(&batch, "txn_id").unwrap().seen(0).unwrap();
        assert_eq!(seen.verdicts.len(), 1);
    }

    #[test]
    fn missing_columns_and_null_scores_are_errors_not_panics() {
        let batch = batch(false, None);
        let scores = Scores::new(&batch, "txn_id").unwrap();
        assert!(scores.seen(0).is_err());
        assert!(Scores::new(&batch, "order_id").is_err());
        let no_features = batch.project(&[0, 1, 2, 3, 4, 5, 6]).unwrap();
        assert!(Scores::new(&no_features, "txn_id").is_err());
    }

    #[test]
    fn labels_read_and_rows_without_id_or_label_are_skipped() {
        let batch = RecordBatch::try_from_iter([
            (
                "txn_id",
                Arc::new(StringArray::from(vec![Some("t1"), None, Some("t3")])) as ArrayRef,
            ),
            (
                "is_fraud",
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            ),
        ])
        .unwrap();
        let (labels, skipped) = labels(&batch, "txn_id", "is_fraud").unwrap();
        assert_eq!(labels, vec![("t1".to_string(), true)]);
        assert_eq!(skipped, 1 + 1);
        assert!(super::labels(&batch, "txn_id", "label").is_err());
        assert!(super::labels(&batch, "is_fraud", "is_fraud").is_err());
    }
}
