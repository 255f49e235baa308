//! What the monitor reads off its topics: a prediction (the worker's JSON object) and a label
//! (an event of the label source). Pure, so every shape a topic can carry is unit-tested.

use quiver_features::Value;
use quiver_monitor::tracker::{Seen, Slot, Verdict};
use serde_json::{Map, Value as Json};

use crate::{Error, Result};

/// How predictions and labels name their fields.
#[derive(Debug, Clone)]
pub struct Fields {
    /// The event-id fields of the scored sources (a prediction carries its source's).
    pub prediction_ids: Vec<String>,
    /// The label source's event-id field.
    pub label_id: String,
    /// The label source's boolean column.
    pub label: String,
}

/// A prediction as the monitor tracks it.
pub fn prediction(fields: &Fields, payload: &[u8]) -> Result<Seen> {
    let object = object(payload)?;
    let event_id = fields
        .prediction_ids
        .iter()
        .find_map(|name| object.get(name).and_then(Json::as_str))
        .ok_or_else(|| unreadable("no event id field", &fields.prediction_ids.join(", ")))?
        .to_string();
    let mut verdicts = vec![verdict(&object, None)?];
    if let Some(shadow) = object.get("shadow").and_then(Json::as_object) {
        verdicts.push(verdict(shadow, Some("shadow"))?);
    }
    let features = object
        .get("features")
        .and_then(Json::as_object)
        .ok_or_else(|| unreadable("no `features` object", ""))?
        .iter()
        .map(|(name, v)| (name.clone(), value(v)))
        .collect();
    let event_time = time(&object, "event_time")?;
    let prediction_time = time(&object, "prediction_time")?;
    Ok(Seen {
        event_id,
        verdicts,
        features,
        prediction_time_us: prediction_time,
        latency_ms: (prediction_time - event_time) as f64 / 1_000.0,
    })
}

/// A label: its event id and value.
pub fn label(fields: &Fields, payload: &[u8]) -> Result<(String, bool)> {
    let object = object(payload)?;
    let id = object
        .get(&fields.label_id)
        .and_then(Json::as_str)
        .ok_or_else(|| unreadable("no event id field", &fields.label_id))?;
    let label = object
        .get(&fields.label)
        .and_then(Json::as_bool)
        .ok_or_else(|| unreadable("no boolean label field", &fields.label))?;
    Ok((id.to_string(), label))
}

fn object(payload: &[u8]) -> Result<Map<String, Json>> {
    match serde_json::from_slice(payload) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(_) => Err(unreadable("not a JSON object", "")),
        Err(e) => Err(unreadable("not JSON", &e.to_string())),
    }
}

/// The deciding verdict (its variant in the object) or a shadow's.
fn verdict(object: &Map<String, Json>, variant: Option<&str>) -> Result<Verdict> {
    let model_id = object
        .get("model_id")
        .and_then(Json::as_str)
        .ok_or_else(|| unreadable("no `model_id`", ""))?;
    let variant = match variant {
        Some(v) => v,
        None => object
            .get("variant")
            .and_then(Json::as_str)
            .unwrap_or("production"),
    };
    let score = object
        .get("score")
        .and_then(Json::as_f64)
        .filter(|s| s.is_finite())
        .ok_or_else(|| unreadable("no finite `score`", model_id))?;
    let decision = object
        .get("decision")
        .and_then(Json::as_bool)
        .ok_or_else(|| unreadable("no boolean `decision`", model_id))?;
    Ok(Verdict {
        slot: Slot {
            model_id: model_id.to_string(),
            variant: variant.to_string(),
        },
        score,
        decision,
    })
}

/// An RFC 3339 time field, in µs since the epoch.
fn time(object: &Map<String, Json>, name: &str) -> Result<i64> {
    let text = object
        .get(name)
        .and_then(Json::as_str)
        .ok_or_else(|| unreadable("no time field", name))?;
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| unreadable("a time that is not RFC 3339", &format!("{name}: {e}")))
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
    use super::*;

    fn fields() -> Fields {
        Fields {
            prediction_ids: vec!["txn_id".into()],
            label_id: "txn_id".into(),
            label: "is_fraud".into(),
        }
    }

    const PREDICTION: &str = r#"{"txn_id":"t1","user_id":"u1","model_id":"m1","variant":"canary","score":0.25,"decision":false,"features":{"v__amount":12.5,"v__country":"FR","v__none":null,"v__flag":true},"event_time":"2026-11-28T10:00:00.000Z","prediction_time":"2026-11-28T10:00:00.020Z","shadow":{"model_id":"m2","score":0.75,"decision":true}}"#;

    #[test]
    fn a_prediction_reads_with_its_shadow_features_and_latency() {
        let seen = prediction(&fields(), PREDICTION.as_bytes()).unwrap();
        assert_eq!(seen.event_id, "t1");
        assert_eq!(seen.verdicts.len(), 2);
        assert_eq!(seen.verdicts[0].slot.variant, "canary");
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
            seen.features,
            vec![
                ("v__amount".to_string(), Value::Float(12.5)),
                ("v__country".to_string(), Value::Str("FR".into())),
                ("v__none".to_string(), Value::Null),
                ("v__flag".to_string(), Value::Bool(true)),
            ]
        );
    }

    #[test]
    fn labels_read_and_anything_else_is_unreadable_not_a_panic() {
        let l = label(
            &fields(),
            br#"{"txn_id":"t1","user_id":"u1","is_fraud":true,"event_time":"2026-11-28T10:00:05Z"}"#,
        )
        .unwrap();
        assert_eq!(l, ("t1".to_string(), true));
        for bad in [
            &b"not json"[..],
            b"[1]",
            b"{}",
            br#"{"txn_id":"t1","is_fraud":"yes"}"#,
            br#"{"txn_id":1,"is_fraud":true}"#,
        ] {
            assert!(label(&fields(), bad).is_err(), "{bad:?}");
            assert!(prediction(&fields(), bad).is_err(), "{bad:?}");
        }
        let no_time = PREDICTION.replace("\"event_time\":\"2026-11-28T10:00:00.000Z\",", "");
        assert!(prediction(&fields(), no_time.as_bytes()).is_err());
        let nan_score = PREDICTION.replace("0.25", "null");
        assert!(prediction(&fields(), nan_score.as_bytes()).is_err());
    }
}
