//! Vectorised decoding of JSON events into Arrow record batches, with per-event rejection.
//!
//! A micro-batch of Kafka payloads is decoded in one pass of `arrow-json`'s tape decoder. Each
//! payload is first checked to be exactly one JSON object within the size limit (a cheap
//! allocation-free scan), so payloads can never merge or split in the tape. Type errors make the
//! batch decode fail as a whole; only then are payloads decoded one by one to find the culprits
//! (rare: bad events are the exception). Required fields, identity fields and event times are
//! checked column-wise afterwards.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, TimestampMillisecondArray,
};
use arrow::compute::{CastOptions, cast_with_options, concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::json::reader::{Decoder, ReaderBuilder};
use serde::de::IgnoredAny;

use crate::error::Result;
use crate::schema::{FieldDef, FieldType, SourceSchema, timestamp_type};

/// Why an event was rejected; the value of the `quiver.reason` dead-letter header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Larger than `ingest.max_event_bytes`.
    TooLarge,
    /// Empty, not JSON, or more than one JSON value.
    NotJson,
    /// Valid JSON but not an object.
    NotObject,
    /// A field has the wrong type.
    WrongType,
    /// A required field, key or id is missing, null or empty.
    MissingField,
    /// The event time is not a valid RFC 3339 time.
    BadEventTime,
    /// The event time is further ahead of the ingest time than `ingest.max_future_skew_ms`.
    EventTimeInFuture,
    /// A number is NaN or infinite (`"NaN"`, `"inf"`, `1e999`).
    NonFiniteNumber,
}

impl RejectReason {
    /// Stable code used in headers and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::NotJson => "not_json",
            Self::NotObject => "not_object",
            Self::WrongType => "wrong_type",
            Self::MissingField => "missing_field",
            Self::BadEventTime => "bad_event_time",
            Self::EventTimeInFuture => "event_time_in_future",
            Self::NonFiniteNumber => "non_finite_number",
        }
    }
}

/// One rejected event.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Index of the event in the input slice.
    pub index: usize,
    /// Reason code.
    pub reason: RejectReason,
    /// Human-readable detail.
    pub detail: String,
}

/// The column-wise checks' bookkeeping: which decoded rows are still kept, the message index of
/// each, and the rejections so far.
struct Screen<'a> {
    candidates: &'a [usize],
    keep: &'a mut [bool],
    rejected: &'a mut Vec<Rejection>,
}

impl Screen<'_> {
    /// Rejects with `reason` every kept row for which `check` gives a detail.
    fn reject(&mut self, reason: RejectReason, mut check: impl FnMut(usize) -> Option<String>) {
        for (row, kept) in self.keep.iter_mut().enumerate() {
            if *kept && let Some(detail) = check(row) {
                *kept = false;
                self.rejected.push(Rejection {
                    index: self.candidates[row],
                    reason,
                    detail,
                });
            }
        }
    }
}

/// One event to decode: its Kafka offset and payload (None for a null payload).
#[derive(Debug, Clone, Copy)]
pub struct RawEvent<'a> {
    /// Kafka offset.
    pub offset: i64,
    /// Message payload.
    pub payload: Option<&'a [u8]>,
}

/// Result of decoding a micro-batch.
#[derive(Debug)]
pub struct DecodeOutcome {
    /// Valid events, in input order, in the source's raw schema.
    pub batch: RecordBatch,
    /// Rejected events, in input order.
    pub rejected: Vec<Rejection>,
}

/// Decodes a source's events.
#[derive(Debug, Clone)]
pub struct EventDecoder {
    source: Arc<SourceSchema>,
    /// All fields nullable; timestamps read as strings and parsed column-wise.
    json_schema: SchemaRef,
    raw_schema: SchemaRef,
    max_event_bytes: usize,
    /// Event times further ahead of the ingest time are rejected (µs); `None`: no limit.
    max_future_skew_us: Option<i64>,
}

impl EventDecoder {
    /// A decoder for `source` rejecting payloads above `max_event_bytes`.
    pub fn new(source: Arc<SourceSchema>, max_event_bytes: usize) -> Self {
        let json_fields: Vec<Field> = source
            .fields
            .iter()
            .map(|f| {
                let ty = match f.ty {
                    FieldType::Timestamp => DataType::Utf8,
                    other => other.arrow_type(),
                };
                Field::new(&f.name, ty, true)
            })
            .collect();
        Self {
            raw_schema: source.raw_schema(),
            json_schema: Arc::new(Schema::new(json_fields)),
            source,
            max_event_bytes,
            max_future_skew_us: None,
        }
    }

    /// Rejects events whose event time is more than `skew_ms` ahead of their ingest time.
    pub fn with_max_future_skew_ms(mut self, skew_ms: u64) -> Self {
        self.max_future_skew_us = Some(i64::try_from(skew_ms).unwrap_or(i64::MAX / 1000) * 1000);
        self
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.raw_schema
    }

    /// The source this decoder reads.
    pub fn source(&self) -> &Arc<SourceSchema> {
        &self.source
    }

    fn json_decoder(&self, rows: usize) -> Result<Decoder> {
        Ok(ReaderBuilder::new(self.json_schema.clone())
            .with_batch_size(rows.max(1))
            .with_strict_mode(false)
            .build_decoder()?)
    }

    /// Decodes `events` of `partition`, stamping `ingest_time_ms`.
    pub fn decode(
        &self,
        partition: i32,
        events: &[RawEvent<'_>],
        ingest_time_ms: i64,
    ) -> Result<DecodeOutcome> {
        let mut rejected = Vec::new();
        let mut candidates: Vec<usize> = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            match self.precheck(event.payload) {
                Ok(()) => candidates.push(index),
                Err((reason, detail)) => rejected.push(Rejection {
                    index,
                    reason,
                    detail,
                }),
            }
        }

        // Fast path: every candidate through one decoder.
        let mut json_batch = None;
        if !candidates.is_empty() {
            let mut decoder = self.json_decoder(candidates.len())?;
            let fed = candidates.iter().all(|&i| {
                let payload = events[i].payload.unwrap_or_default();
                decoder.decode(payload).is_ok_and(|n| n == payload.len())
            });
            if fed
                && let Ok(Some(batch)) = decoder.flush()
                && batch.num_rows() == candidates.len()
            {
                json_batch = Some(batch);
            }
        }
        // Slow path: find the events the batch choked on.
        let json_batch = match json_batch {
            Some(batch) => batch,
            None => {
                let mut good = Vec::with_capacity(candidates.len());
                let mut parts = Vec::with_capacity(candidates.len());
                for &i in &candidates {
                    match self.decode_one(events[i].payload.unwrap_or_default()) {
                        Ok(batch) => {
                            good.push(i);
                            parts.push(batch);
                        }
                        Err(detail) => rejected.push(Rejection {
                            index: i,
                            reason: RejectReason::WrongType,
                            detail,
                        }),
                    }
                }
                candidates = good;
                concat_batches(&self.json_schema, &parts)?
            }
        };

        // Column-wise checks: required fields present, identity fields non-empty, times valid.
        let rows = json_batch.num_rows();
        let mut keep = vec![true; rows];
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.raw_schema.fields().len());
        for (field, column) in self.source.fields.iter().zip(json_batch.columns()) {
            let mut screen = Screen {
                candidates: &candidates,
                keep: &mut keep,
                rejected: &mut rejected,
            };
            if field.required && column.null_count() > 0 {
                screen.reject(RejectReason::MissingField, |row| {
                    column
                        .is_null(row)
                        .then(|| format!("required field `{}` is missing or null", field.name))
                });
            }
            if self.source.identity_fields().any(|k| *k == field.name)
                && let Some(strings) = column.as_any().downcast_ref::<StringArray>()
            {
                screen.reject(RejectReason::MissingField, |row| {
                    (strings.is_valid(row) && strings.value(row).is_empty())
                        .then(|| format!("key field `{}` is empty", field.name))
                });
            }
            if field.ty == FieldType::Float
                && let Some(floats) = column.as_any().downcast_ref::<Float64Array>()
            {
                screen.reject(RejectReason::NonFiniteNumber, |row| {
                    let value = floats.value(row);
                    (floats.is_valid(row) && !value.is_finite())
                        .then(|| format!("field `{}`: {value} is not a finite number", field.name))
                });
            }
            let column = if field.ty == FieldType::Timestamp {
                let parsed = cast_with_options(
                    column,
                    &timestamp_type(),
                    &CastOptions {
                        safe: true,
                        ..Default::default()
                    },
                )?;
                screen.reject(RejectReason::BadEventTime, |row| {
                    (column.is_valid(row) && parsed.is_null(row)).then(|| {
                        let text = column
                            .as_any()
                            .downcast_ref::<StringArray>()
                            .map(|s| s.value(row).to_string())
                            .unwrap_or_default();
                        format!("field `{}`: `{text}` is not an RFC 3339 time", field.name)
                    })
                });
                if field.name == self.source.event_time {
                    self.reject_future(field, &parsed, ingest_time_ms, &mut screen);
                }
                parsed
            } else {
                column.clone()
            };
            columns.push(column);
        }
        let partitions = Int32Array::from(vec![partition; rows]);
        let offsets = Int64Array::from_iter_values(candidates.iter().map(|&i| events[i].offset));
        let ingest =
            TimestampMillisecondArray::from(vec![ingest_time_ms; rows]).with_timezone("UTC");
        columns.push(Arc::new(partitions));
        columns.push(Arc::new(offsets));
        columns.push(Arc::new(ingest));

        // Build the batch against a nullable twin of the raw schema, filter, then re-stamp the
        // schema: after the filter, required columns hold no nulls.
        let nullable = Arc::new(Schema::new(
            self.raw_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(nullable, columns)?;
        let batch = if keep.iter().all(|k| *k) {
            batch
        } else {
            filter_record_batch(&batch, &BooleanArray::from(keep))?
        };
        let batch = RecordBatch::try_new(self.raw_schema.clone(), batch.columns().to_vec())?;
        rejected.sort_by_key(|r| r.index);
        Ok(DecodeOutcome { batch, rejected })
    }

    /// Rejects rows whose event time (`parsed`, µs) is further ahead of `ingest_time_ms` than
    /// the decoder allows.
    fn reject_future(
        &self,
        field: &FieldDef,
        parsed: &ArrayRef,
        ingest_time_ms: i64,
        screen: &mut Screen<'_>,
    ) {
        let Some(skew_us) = self.max_future_skew_us else {
            return;
        };
        let Some(times) = parsed.as_any().downcast_ref::<TimestampMicrosecondArray>() else {
            return;
        };
        let ingest_us = ingest_time_ms.saturating_mul(1000);
        let latest = ingest_us.saturating_add(skew_us);
        screen.reject(RejectReason::EventTimeInFuture, |row| {
            (times.is_valid(row) && times.value(row) > latest).then(|| {
                format!(
                    "field `{}` is {} s ahead of the ingest time (limit: ingest.max_future_skew_ms = {} ms)",
                    field.name,
                    (times.value(row) - ingest_us) / 1_000_000,
                    skew_us / 1000
                )
            })
        });
    }

    /// Size, syntax and shape, without building anything.
    fn precheck(&self, payload: Option<&[u8]>) -> std::result::Result<(), (RejectReason, String)> {
        let Some(payload) = payload else {
            return Err((RejectReason::NotJson, "null payload".to_string()));
        };
        if payload.len() > self.max_event_bytes {
            return Err((
                RejectReason::TooLarge,
                format!(
                    "{} bytes exceeds the limit of {} bytes",
                    payload.len(),
                    self.max_event_bytes
                ),
            ));
        }
        if let Err(e) = serde_json::from_slice::<IgnoredAny>(payload) {
            return Err((RejectReason::NotJson, e.to_string()));
        }
        match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Ok(()),
            _ => Err((
                RejectReason::NotObject,
                "event is not a JSON object".to_string(),
            )),
        }
    }

    fn decode_one(&self, payload: &[u8]) -> std::result::Result<RecordBatch, String> {
        let mut decoder = self.json_decoder(1).map_err(|e| e.to_string())?;
        decoder.decode(payload).map_err(|e| e.to_string())?;
        match decoder.flush() {
            Ok(Some(batch)) if batch.num_rows() == 1 => Ok(batch),
            Ok(_) => Err("event did not decode to exactly one row".to_string()),
            Err(e) => Err(e.to_string().replace("Json error: ", "")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::tests::TRANSACTIONS;

    fn decoder() -> EventDecoder {
        EventDecoder::new(
            Arc::new(SourceSchema::parse("t", TRANSACTIONS).unwrap()),
            512,
        )
    }

    fn event(user: &str, amount: &str, time: &str) -> String {
        format!(
            r#"{{"txn_id":"t-{user}","user_id":"{user}","merchant_id":"m1","amount":{amount},"country":"FR","event_time":"{time}"}}"#
        )
    }

    fn run(payloads: &[Option<String>]) -> DecodeOutcome {
        let events: Vec<RawEvent<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawEvent {
                offset: 100 + i as i64,
                payload: p.as_deref().map(str::as_bytes),
            })
            .collect();
        decoder().decode(3, &events, 1_000).unwrap()
    }

    #[test]
    fn valid_events_decode_in_one_batch() {
        let out = run(&[
            Some(event("u1", "12.5", "2026-11-26T10:00:00.250Z")),
            Some(event("u2", "7", "2026-11-26T11:00:00+01:00")),
        ]);
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        let b = &out.batch;
        assert_eq!(b.num_rows(), 2);
        let amount = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(amount.values(), &[12.5, 7.0]);
        let ts = b
            .column(6)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.value(0), 1_795_687_200_250_000);
        assert_eq!(
            ts.value(1),
            1_795_687_200_000_000,
            "offsets are normalised to UTC"
        );
        let offsets = b.column(8).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(offsets.values(), &[100, 101]);
        assert!(b.column(5).is_null(0), "optional field absent is null");
    }

    #[test]
    fn each_kind_of_bad_event_is_rejected_with_its_reason() {
        let good = event("u1", "1.0", "2026-11-26T10:00:00Z");
        let out = run(&[
            Some(good.clone()),
            Some("not json".to_string()),
            Some("[1,2]".to_string()),
            Some(event("u2", "\"lots\"", "2026-11-26T10:00:00Z")),
            Some(r#"{"txn_id":"t","merchant_id":"m","amount":1,"country":"FR","event_time":"2026-11-26T10:00:00Z"}"#.to_string()),
            Some(event("u3", "1", "yesterday")),
            Some(format!("{{\"pad\":\"{}\"}}", "x".repeat(600))),
            None,
            Some(format!("{good}{good}")),
            Some(event("", "1", "2026-11-26T10:00:00Z")),
            Some(good.replace("\"u1\"", "42")),
            Some(good),
        ]);
        let reasons: Vec<_> = out.rejected.iter().map(|r| (r.index, r.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                (1, RejectReason::NotJson),
                (2, RejectReason::NotObject),
                (3, RejectReason::WrongType),
                (4, RejectReason::MissingField),
                (5, RejectReason::BadEventTime),
                (6, RejectReason::TooLarge),
                (7, RejectReason::NotJson),
                (8, RejectReason::NotJson),
                (9, RejectReason::MissingField),
                (10, RejectReason::WrongType),
            ]
        );
        assert_eq!(out.batch.num_rows(), 2);
        let offsets = out
            .batch
            .column(8)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(offsets.values(), &[100, 111]);
        assert!(
            out.rejected[3].detail.contains("user_id"),
            "{:?}",
            out.rejected[3]
        );
    }

    #[test]
    fn non_finite_numbers_are_rejected() {
        let time = "2026-11-26T10:00:00Z";
        let out = run(&[
            Some(event("u1", "\"NaN\"", time)),
            Some(event("u2", "1e999", time)),
            Some(event("u3", "\"-inf\"", time)),
            Some(event("u4", "-1e999", time)),
            Some(event("u5", "2.5", time)),
        ]);
        let reasons: Vec<_> = out.rejected.iter().map(|r| (r.index, r.reason)).collect();
        assert_eq!(
            reasons,
            (0..4)
                .map(|i| (i, RejectReason::NonFiniteNumber))
                .collect::<Vec<_>>()
        );
        assert!(
            out.rejected[0].detail.contains("amount"),
            "{:?}",
            out.rejected[0]
        );
        assert_eq!(out.batch.num_rows(), 1);
    }

    #[test]
    fn events_too_far_ahead_of_their_ingest_time_are_rejected() {
        let decoder = decoder().with_max_future_skew_ms(300_000);
        // Ingest time 2026-11-26T10:00:00Z.
        let ingest_ms = 1_795_687_200_000;
        let payloads = [
            event("u1", "1", "2026-11-26T10:05:00Z"), // exactly at the limit: kept
            event("u2", "1", "2026-11-26T10:05:00.001Z"),
            event("u3", "1", "2099-01-01T00:00:00Z"),
            event("u4", "1", "1999-01-01T00:00:00Z"), // old: the lateness rule's business
        ];
        let events: Vec<RawEvent<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawEvent {
                offset: i as i64,
                payload: Some(p.as_bytes()),
            })
            .collect();
        let out = decoder.decode(0, &events, ingest_ms).unwrap();
        let reasons: Vec<_> = out.rejected.iter().map(|r| (r.index, r.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                (1, RejectReason::EventTimeInFuture),
                (2, RejectReason::EventTimeInFuture)
            ]
        );
        assert_eq!(out.rejected[0].reason.code(), "event_time_in_future");
        assert!(
            out.rejected[1].detail.contains("max_future_skew_ms"),
            "{:?}",
            out.rejected[1]
        );
        assert_eq!(out.batch.num_rows(), 2);
        // Without a limit, nothing is rejected for its time.
        assert!(
            super::tests::decoder()
                .decode(0, &events, ingest_ms)
                .unwrap()
                .rejected
                .is_empty()
        );
    }

    #[test]
    fn empty_input_gives_an_empty_batch() {
        let out = run(&[]);
        assert_eq!(out.batch.num_rows(), 0);
        assert_eq!(out.batch.schema().fields().len(), 10);
    }
}
