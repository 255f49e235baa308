//! Claims: what the worker decided for each event — the vector of every view with its clock,
//! the values of other sources' views, and the verdict or dead-letter reason — recorded in Redis
//! for a range of offsets *before* any prediction of that range leaves the process.
//!
//! The vector as of an event depends on how far the other partitions of its entities had come
//! when it was computed, which a replay cannot know; and the deployment may change between an
//! emission and its replay. So a replay (after a crash, or by the next owner of the partition)
//! that finds a claim repeats it — same features, same model, score and decision, and the feature
//! log row written from the same vector — instead of deciding again. When two members race for
//! one range (one of them lost the partition without knowing yet), the first claim recorded wins
//! and the other adopts it. Claims are deleted once their offsets are committed.

use std::collections::{BTreeMap, BTreeSet};

use quiver_features::{Clock, Value};
use serde::{Deserialize, Serialize};

use crate::prediction::Outcome;

/// Encoding version prefixed to every claim batch.
const VERSION: u8 = 1;

/// One view's vector as of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ViewVector {
    /// Read time (µs).
    pub(crate) as_of: i64,
    /// The event was too late to be aggregated.
    pub(crate) late: bool,
    /// The other partitions' shards merged in.
    pub(crate) clock: Clock,
    /// Feature values, in the view's order.
    pub(crate) values: Vec<Value>,
}

/// A view of another source as read for an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LookupVector {
    /// The latest event time the values include.
    pub(crate) event_time_max: Option<i64>,
    /// Feature values, in the view's order.
    pub(crate) values: Vec<Value>,
}

/// What was decided for one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ClaimRecord {
    pub(crate) offset: i64,
    /// µs.
    pub(crate) prediction_time: i64,
    pub(crate) outcome: Outcome,
    /// One per view of the source, in order.
    pub(crate) views: Vec<ViewVector>,
    /// One per lookup of the source, in order.
    pub(crate) lookups: Vec<LookupVector>,
}

/// The claim of one offset range of a partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ClaimBatch {
    pub(crate) first: i64,
    pub(crate) last: i64,
    pub(crate) records: Vec<ClaimRecord>,
}

impl ClaimBatch {
    /// Version byte + postcard (the hot path encodes [`ClaimBatchRef`]s, the same bytes).
    #[cfg(test)]
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes [`ClaimBatch::encode`]'s output.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes.split_first() {
            Some((&VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
            Some((v, _)) => Err(format!("unknown claim encoding version {v}")),
            None => Err("empty claim".to_string()),
        }
    }
}

/// Version byte + postcard of a batch, owned or borrowed (the two write the same bytes).
fn encode(batch: &impl Serialize) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail; a failure would leave the bare version
    // byte, which decodes as no batch at all rather than a wrong one.
    postcard::to_extend(batch, vec![VERSION]).unwrap_or_else(|_| vec![VERSION])
}

/// A [`ClaimRecord`] borrowed from what the hot path decided: encoded without copying the
/// vectors, as exactly the bytes of the owned record.
#[derive(Debug, Serialize)]
pub(crate) struct ClaimRecordRef<'a> {
    pub(crate) offset: i64,
    pub(crate) prediction_time: i64,
    pub(crate) outcome: &'a Outcome,
    /// The views that have a vector, in order (as the owned record's `views`).
    pub(crate) views: Present<'a, ViewVector>,
    pub(crate) lookups: &'a [LookupVector],
}

/// The present values of a list of options, serialised as the sequence of them.
#[derive(Debug)]
pub(crate) struct Present<'a, T>(pub(crate) &'a [Option<T>]);

impl<T: Serialize> Serialize for Present<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq as _;
        let mut seq = serializer.serialize_seq(Some(self.0.iter().flatten().count()))?;
        for value in self.0.iter().flatten() {
            seq.serialize_element(value)?;
        }
        seq.end()
    }
}

/// A [`ClaimBatch`] of borrowed records.
#[derive(Debug, Serialize)]
pub(crate) struct ClaimBatchRef<'a> {
    pub(crate) first: i64,
    pub(crate) last: i64,
    pub(crate) records: Vec<ClaimRecordRef<'a>>,
}

impl ClaimBatchRef<'_> {
    /// The bytes [`ClaimBatch::encode`] writes for the same batch.
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode(self)
    }
}

/// The claims of one partition this member knows: records recorded by others (a previous owner,
/// or a member it raced) that it has not replayed yet, and every range recorded, to delete once
/// committed.
#[derive(Debug, Default)]
pub(crate) struct ClaimBook {
    records: BTreeMap<i64, ClaimRecord>,
    ranges: BTreeSet<(i64, i64)>,
}

impl ClaimBook {
    /// Takes in a batch recorded by another member.
    pub(crate) fn adopt(&mut self, batch: ClaimBatch) {
        self.ranges.insert((batch.first, batch.last));
        for record in batch.records {
            self.records.insert(record.offset, record);
        }
    }

    /// Notes a range this member recorded.
    pub(crate) fn recorded(&mut self, first: i64, last: i64) {
        self.ranges.insert((first, last));
    }

    /// The record of `offset`, if another member claimed it.
    pub(crate) fn take(&mut self, offset: i64) -> Option<ClaimRecord> {
        self.records.remove(&offset)
    }

    /// The ranges every offset of which is below `committed_next`, forgotten here; the caller
    /// deletes them from Redis.
    pub(crate) fn release(&mut self, committed_next: i64) -> Vec<(i64, i64)> {
        let done: Vec<(i64, i64)> = self
            .ranges
            .iter()
            .copied()
            .filter(|(_, last)| *last < committed_next)
            .collect();
        for range in &done {
            self.ranges.remove(range);
        }
        self.records = self.records.split_off(&committed_next);
        done
    }

    /// The known ranges.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = &(i64, i64)> {
        self.ranges.iter()
    }
}

/// Splits offsets to claim (ascending) into runs no known range cuts through, as index ranges:
/// each run can be claimed as one range without overlapping a range recorded already.
pub(crate) fn runs(offsets: &[i64], known: &[(i64, i64)]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=offsets.len() {
        let cut = i == offsets.len()
            || known
                .iter()
                .any(|(first, last)| *first <= offsets[i] && *last >= offsets[i - 1]);
        if cut {
            if start < i {
                out.push(start..i);
            }
            start = i;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prediction::{Variant, Verdict};

    fn record(offset: i64) -> ClaimRecord {
        ClaimRecord {
            offset,
            prediction_time: 1_000 + offset,
            outcome: Outcome::Scored(Verdict {
                model_id: "m".into(),
                variant: Variant::Production,
                score: 0.25,
                decision: false,
                shadow: None,
            }),
            views: vec![ViewVector {
                as_of: 7,
                late: false,
                clock: Clock::from([(1, 40)]),
                values: vec![Value::Int(3), Value::Float(2.5), Value::Null],
            }],
            lookups: vec![],
        }
    }

    #[test]
    fn batches_round_trip_and_foreign_bytes_are_refused() {
        let batch = ClaimBatch {
            first: 10,
            last: 12,
            records: vec![record(10), record(12)],
        };
        assert_eq!(ClaimBatch::decode(&batch.encode()).unwrap(), batch);
        assert!(ClaimBatch::decode(&[]).is_err());
        assert!(ClaimBatch::decode(&[7, 1]).is_err());
    }

    #[test]
    fn a_borrowed_batch_encodes_as_the_owned_one() {
        let owned = ClaimBatch {
            first: 10,
            last: 12,
            records: vec![record(10), record(12)],
        };
        let views: Vec<Vec<Option<ViewVector>>> = owned
            .records
            .iter()
            .map(|r| {
                // A view without a vector (state past the event) is left out of the record.
                let mut views: Vec<Option<ViewVector>> =
                    r.views.iter().cloned().map(Some).collect();
                views.insert(0, None);
                views
            })
            .collect();
        let borrowed = ClaimBatchRef {
            first: 10,
            last: 12,
            records: owned
                .records
                .iter()
                .zip(&views)
                .map(|(r, views)| ClaimRecordRef {
                    offset: r.offset,
                    prediction_time: r.prediction_time,
                    outcome: &r.outcome,
                    views: Present(views),
                    lookups: &r.lookups,
                })
                .collect(),
        };
        assert_eq!(borrowed.encode(), owned.encode());
    }

    #[test]
    fn the_book_hands_out_adopted_records_once_and_releases_committed_ranges() {
        let mut book = ClaimBook::default();
        book.adopt(ClaimBatch {
            first: 10,
            last: 12,
            records: vec![record(10), record(12)],
        });
        book.recorded(13, 20);
        assert_eq!(book.take(10).map(|r| r.offset), Some(10));
        assert_eq!(book.take(10), None);
        assert_eq!(book.release(13), vec![(10, 12)]);
        assert_eq!(book.take(12), None, "records below the commit go too");
        assert_eq!(book.release(20), vec![]);
        assert_eq!(book.release(21), vec![(13, 20)]);
    }

    #[test]
    fn runs_never_straddle_a_known_range() {
        let offsets = [120, 121, 125, 129, 141, 150];
        assert_eq!(runs(&offsets, &[]), vec![0..6]);
        assert_eq!(runs(&offsets, &[(130, 140)]), vec![0..4, 4..6]);
        assert_eq!(
            runs(&offsets, &[(122, 124), (142, 149)]),
            vec![0..2, 2..5, 5..6]
        );
        assert_eq!(runs(&offsets, &[(100, 119), (151, 160)]), vec![0..6]);
        assert_eq!(runs(&[], &[(1, 2)]), Vec::<std::ops::Range<usize>>::new());
    }
}
