//! What the worker decides for an event ([`Outcome`], recorded in claims) and the JSON object it
//! puts on the predictions topic ([`Prediction`]).

use chrono::{DateTime, SecondsFormat, Utc};
use quiver_features::Value;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// Which deployment slot decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The production model.
    Production,
    /// The canary, for its share of event ids.
    Canary,
}

impl Variant {
    /// Its name in predictions, the score store and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Production => "production",
            Variant::Canary => "canary",
        }
    }
}

/// A shadow model's verdict, carried along without deciding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShadowVerdict {
    pub(crate) model_id: String,
    pub(crate) score: f64,
    pub(crate) decision: bool,
}

/// The deciding model's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Verdict {
    pub(crate) model_id: String,
    pub(crate) variant: Variant,
    pub(crate) score: f64,
    pub(crate) decision: bool,
    pub(crate) shadow: Option<ShadowVerdict>,
}

/// What happened to a scored event; a replay repeats it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// A prediction.
    Scored(Verdict),
    /// It could not be scored: a dead letter with this reason (`score_not_finite`,
    /// `model_unavailable`, `vector_rejected`).
    Rejected {
        /// Reason code.
        reason: String,
        /// What exactly.
        detail: String,
    },
}

/// `(name, value)` pairs serialised as one JSON object of plain values.
pub(crate) struct Features<'a>(pub(crate) &'a [(&'a str, &'a Value)]);

impl Serialize for Features<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, &Plain(value))?;
        }
        map.end()
    }
}

/// `(name, text)` pairs serialised as one JSON object.
pub(crate) struct Fields<'a>(pub(crate) &'a [(&'a str, String)]);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A feature value as plain JSON: null, boolean, number or string (a non-finite float is null).
struct Plain<'a>(&'a Value);

impl Serialize for Plain<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => serializer.serialize_none(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::Float(f) if f.is_finite() => serializer.serialize_f64(*f),
            Value::Float(_) => serializer.serialize_none(),
            Value::Str(s) => serializer.serialize_str(s),
        }
    }
}

/// One object on the predictions topic.
#[derive(Serialize)]
pub(crate) struct Prediction<'a> {
    /// The event id field (e.g. `txn_id`) and the entity keys, by their names.
    #[serde(flatten)]
    pub(crate) ids: Fields<'a>,
    pub(crate) model_id: &'a str,
    pub(crate) variant: Variant,
    pub(crate) score: f64,
    pub(crate) decision: bool,
    /// `<view>__<feature>` → the value scored: each view's feature-log row of the event.
    pub(crate) features: Features<'a>,
    /// For views of other sources (read from the online store when scoring): the latest event
    /// time their values include.
    #[serde(skip_serializing_if = "is_empty")]
    pub(crate) event_time_max: Fields<'a>,
    pub(crate) event_time: String,
    pub(crate) prediction_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) shadow: Option<&'a ShadowVerdict>,
}

fn is_empty(fields: &Fields<'_>) -> bool {
    fields.0.is_empty()
}

impl Prediction<'_> {
    /// The JSON bytes.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A time in µs as RFC 3339 with milliseconds.
pub(crate) fn rfc3339_millis(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Share of the canary: a fixed hash of the event id in [0, 1).
pub(crate) fn canary_point(event_id: &str) -> f64 {
    let h = quiver_features::hll::hash(event_id.as_bytes());
    (h % 1_000_000) as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prediction_is_one_flat_json_object() {
        let values = [
            Value::Int(3),
            Value::Float(f64::NAN),
            Value::Str("FR".into()),
        ];
        let features = [
            ("user_txn__n", &values[0]),
            ("user_txn__mean", &values[1]),
            ("user_txn__country", &values[2]),
        ];
        let ids = [
            ("txn_id", "t-1".to_string()),
            ("user_id", "u-1".to_string()),
        ];
        let shadow = ShadowVerdict {
            model_id: "b".into(),
            score: 0.25,
            decision: false,
        };
        let p = Prediction {
            ids: Fields(&ids),
            model_id: "a",
            variant: Variant::Canary,
            score: 0.5,
            decision: true,
            features: Features(&features),
            event_time_max: Fields(&[]),
            event_time: rfc3339_millis(1_795_687_200_000_000),
            prediction_time: rfc3339_millis(1_795_687_200_250_000),
            shadow: Some(&shadow),
        };
        let json: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "txn_id": "t-1", "user_id": "u-1", "model_id": "a", "variant": "canary",
                "score": 0.5, "decision": true,
                "features": {"user_txn__n": 3, "user_txn__mean": null, "user_txn__country": "FR"},
                "event_time": "2026-11-26T10:00:00.000Z",
                "prediction_time": "2026-11-26T10:00:00.250Z",
                "shadow": {"model_id": "b", "score": 0.25, "decision": false}
            })
        );
    }

    #[test]
    fn the_canary_share_follows_the_fraction() {
        let hits = (0..100_000)
            .filter(|i| canary_point(&format!("t-{i}")) < 0.1)
            .count();
        assert!((9_500..10_500).contains(&hits), "{hits}");
        assert_eq!(canary_point("t-1"), canary_point("t-1"));
    }
}
