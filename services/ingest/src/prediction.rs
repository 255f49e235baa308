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
pub(crate) struct Fields<'a>(pub(crate) &'a [(&'a str, &'a str)]);

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
    pub(crate) event_time: Millis,
    pub(crate) prediction_time: Millis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) shadow: Option<&'a ShadowVerdict>,
}

fn is_empty(fields: &Fields<'_>) -> bool {
    fields.0.is_empty()
}

impl Prediction<'_> {
    /// The JSON object, written directly (the same bytes serde writes for this struct, at a
    /// fraction of the cost: it is the worker's per-event output). Returns where in `out` the
    /// `features` object is (the score store keeps it as text).
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) -> std::ops::Range<usize> {
        out.push(b'{');
        for (name, value) in self.ids.0 {
            write_str(out, name);
            out.push(b':');
            write_str(out, value);
            out.push(b',');
        }
        out.extend_from_slice(b"\"model_id\":");
        write_str(out, self.model_id);
        out.extend_from_slice(b",\"variant\":");
        write_str(out, self.variant.as_str());
        out.extend_from_slice(b",\"score\":");
        write_f64(out, self.score);
        out.extend_from_slice(if self.decision {
            b",\"decision\":true,\"features\":"
        } else {
            b",\"decision\":false,\"features\":"
        });
        let start = out.len();
        write_object(out, self.features.0.iter().copied(), write_plain);
        let features = start..out.len();
        if !self.event_time_max.0.is_empty() {
            out.extend_from_slice(b",\"event_time_max\":");
            let times = self.event_time_max.0.iter().copied();
            write_object(out, times, write_str);
        }
        out.extend_from_slice(b",\"event_time\":");
        self.event_time.write_json(out);
        out.extend_from_slice(b",\"prediction_time\":");
        self.prediction_time.write_json(out);
        if let Some(shadow) = self.shadow {
            out.extend_from_slice(b",\"shadow\":{\"model_id\":");
            write_str(out, &shadow.model_id);
            out.extend_from_slice(b",\"score\":");
            write_f64(out, shadow.score);
            out.extend_from_slice(if shadow.decision {
                b",\"decision\":true}"
            } else {
                b",\"decision\":false}"
            });
        }
        out.push(b'}');
        features
    }
}

/// A JSON object of `(name, value)` members, each value written by `write_value`.
fn write_object<'a, V>(
    out: &mut Vec<u8>,
    members: impl IntoIterator<Item = (&'a str, V)>,
    mut write_value: impl FnMut(&mut Vec<u8>, V),
) {
    out.push(b'{');
    for (i, (name, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

/// A feature value as plain JSON (as [`Plain`] serialises it).
fn write_plain(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(i) => {
            use std::io::Write as _;
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => write_f64(out, *f),
        Value::Str(s) => write_str(out, s),
    }
}

/// A float as JSON: the shortest text that reads back as the same number (`null` when it is
/// not finite).
fn write_f64(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() {
        // serde_json's own formatter: identical output to the derived serialisation.
        let _ = serde_json::to_writer(&mut *out, &f);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// A JSON string: copied as is when nothing needs escaping, else escaped by serde_json.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// A time in µs as RFC 3339 with milliseconds.
pub(crate) fn rfc3339_millis(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A time in µs, serialised as [`rfc3339_millis`] text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Millis(pub(crate) i64);

/// µs from the epoch to 10000-01-01: below it (and from the epoch on) a time is written by
/// [`Millis::write_json`]'s own arithmetic, else by chrono.
const YEAR_10000_MICROS: i64 = 253_402_300_800_000_000;

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&rfc3339_millis(self.0))
    }
}

impl Millis {
    /// The JSON string, as serde writes it: `"YYYY-MM-DDTHH:MM:SS.mmmZ"` computed directly for
    /// times in 1970..=9999 (every event and prediction; chrono's formatter was a measurable
    /// share of the worker's per-event cost), through chrono otherwise.
    fn write_json(self, out: &mut Vec<u8>) {
        if !(0..YEAR_10000_MICROS).contains(&self.0) {
            write_str(out, &rfc3339_millis(self.0));
            return;
        }
        let millis = self.0 / 1_000;
        let (days, ms_of_day) = (millis / 86_400_000, millis % 86_400_000);
        let (year, month, day) = civil_from_days(days);
        let (h, m) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
        let (sec, ms) = (ms_of_day / 1_000 % 60, ms_of_day % 1_000);
        let mut text = *b"\"0000-00-00T00:00:00.000Z\"";
        let mut put = |at: usize, width: usize, mut n: i64| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(1, 4, year);
        put(6, 2, month);
        put(9, 2, day);
        put(12, 2, h);
        put(15, 2, m);
        put(18, 2, sec);
        put(21, 3, ms);
        out.extend_from_slice(&text);
    }
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (`days` ≥ 0): year, month, day.
/// The usual era arithmetic: 400-year eras of 146 097 days, years starting on 1 March.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
        let ids = [("txn_id", "t-1"), ("user_id", "u-\"1\"\n")];
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
            event_time: Millis(1_795_687_200_000_000),
            prediction_time: Millis(1_795_687_200_250_000),
            shadow: Some(&shadow),
        };
        // The direct writer gives exactly the bytes of the derived serialisation.
        let mut direct = Vec::new();
        let range = p.write_json(&mut direct);
        assert_eq!(
            String::from_utf8(direct.clone()).unwrap(),
            serde_json::to_string(&p).unwrap()
        );
        assert_eq!(
            &direct[range],
            serde_json::to_string(&Features(&features))
                .unwrap()
                .as_bytes()
        );
        let json: serde_json::Value = serde_json::from_slice(&direct).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "txn_id": "t-1", "user_id": "u-\"1\"\n", "model_id": "a", "variant": "canary",
                "score": 0.5, "decision": true,
                "features": {"user_txn__n": 3, "user_txn__mean": null, "user_txn__country": "FR"},
                "event_time": "2026-11-26T10:00:00.000Z",
                "prediction_time": "2026-11-26T10:00:00.250Z",
                "shadow": {"model_id": "b", "score": 0.25, "decision": false}
            })
        );
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        let mut times = vec![0, 999, 1_000, 951_782_400_000_000, YEAR_10000_MICROS - 1];
        // Leap days, year ends and a spread of ordinary instants.
        times.extend([
            68_169_600_000_000,
            4_107_456_000_000_000,
            1_767_225_599_999_999,
        ]);
        let mut t: i64 = 12_345;
        for _ in 0..20_000 {
            t = (t.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1)) & i64::MAX;
            times.push(t % YEAR_10000_MICROS);
        }
        times.extend([-1, -1_000_000, YEAR_10000_MICROS, i64::MIN / 2]);
        for t in times {
            let mut direct = Vec::new();
            Millis(t).write_json(&mut direct);
            assert_eq!(
                String::from_utf8(direct).unwrap(),
                serde_json::to_string(&rfc3339_millis(t)).unwrap(),
                "{t}"
            );
        }
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
