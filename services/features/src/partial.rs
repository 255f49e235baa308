//! Partial aggregates: what one tile keeps per aggregation. Each can absorb an event
//! ([`Partial::add`]), absorb another partial ([`Partial::merge`]) and produce the feature value
//! ([`Partial::finish`]).
//!
//! Sums are compensated (Neumaier), and `stddev` uses Welford's update and Chan's merge, so long
//! windows stay accurate. Online and offline run the very same steps in the same order, so they
//! agree bit for bit; the 1e-9 tolerance of the design covers other engines (e.g. SQL) only.

use serde::{Deserialize, Serialize};

use crate::definition::Op;
use crate::hll::{self, Hll};
use crate::order::Seq;
use crate::value::{Input, Value};

/// The latest value seen, with what orders it: event time, then arrival order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    /// Event time (µs).
    pub time: i64,
    /// Arrival order (partition, offset).
    pub seq: Seq,
    /// The value.
    pub value: Value,
}

/// A partial aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Partial {
    /// Events counted.
    Count(u64),
    /// Compensated sum.
    Sum {
        /// Running sum.
        sum: f64,
        /// Neumaier compensation.
        comp: f64,
    },
    /// Compensated sum and count of non-null inputs.
    Mean {
        /// Running sum.
        sum: f64,
        /// Neumaier compensation.
        comp: f64,
        /// Values summed.
        n: u64,
    },
    /// Smallest value.
    Min(Option<f64>),
    /// Largest value.
    Max(Option<f64>),
    /// Latest value (boxed: every other partial fits in 24 bytes, and a tile holds one
    /// partial per aggregation of its group; stored as an unboxed `Option<Latest>`).
    Last(Option<Box<Latest>>),
    /// Distinct values.
    Distinct(Hll),
    /// Welford moments.
    Stddev {
        /// Values seen.
        n: u64,
        /// Their mean.
        mean: f64,
        /// Sum of squared deviations from the mean.
        m2: f64,
    },
}

fn neumaier(sum: &mut f64, comp: &mut f64, x: f64) {
    let t = *sum + x;
    if sum.abs() >= x.abs() {
        *comp += (*sum - t) + x;
    } else {
        *comp += (x - t) + *sum;
    }
    *sum = t;
}

impl Partial {
    /// Whether this partial, read from storage, is what `op` keeps and well formed.
    pub fn is_valid_for(&self, op: Op) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(&Partial::new(op))
            && match self {
                Partial::Distinct(hll) => hll.is_valid(),
                _ => true,
            }
    }

    /// Whether `partials` hold one partial per operation of `ops`, in order, each what its
    /// operation keeps and well formed.
    pub fn all_valid_for(partials: &[Partial], ops: &[Op]) -> bool {
        partials.len() == ops.len() && partials.iter().zip(ops).all(|(p, op)| p.is_valid_for(*op))
    }

    /// The empty partial of an operation.
    pub fn new(op: Op) -> Self {
        match op {
            Op::Count => Partial::Count(0),
            Op::Sum => Partial::Sum {
                sum: 0.0,
                comp: 0.0,
            },
            Op::Mean => Partial::Mean {
                sum: 0.0,
                comp: 0.0,
                n: 0,
            },
            Op::Min => Partial::Min(None),
            Op::Max => Partial::Max(None),
            Op::Last => Partial::Last(None),
            Op::DistinctCount => Partial::Distinct(Hll::default()),
            Op::Stddev => Partial::Stddev {
                n: 0,
                mean: 0.0,
                m2: 0.0,
            },
        }
    }

    /// Absorbs one event's input (`Null` inputs are ignored except by `count`).
    pub fn add(&mut self, input: Input<'_>, time: i64, seq: Seq, scratch: &mut Vec<u8>) {
        match self {
            Partial::Count(n) => *n += 1,
            Partial::Last(latest) => {
                if input == Input::Null {
                    return;
                }
                match latest {
                    Some(l) if (time, seq) < (l.time, l.seq) => {}
                    Some(l) => {
                        l.time = time;
                        l.seq = seq;
                        // The same value again (a card holder's country): no new allocation.
                        if !input.is(&l.value) {
                            l.value = input.to_value();
                        }
                    }
                    None => {
                        *latest = Some(Box::new(Latest {
                            time,
                            seq,
                            value: input.to_value(),
                        }));
                    }
                }
            }
            Partial::Distinct(sketch) => {
                if input == Input::Null {
                    return;
                }
                input.identity_bytes(scratch);
                sketch.add_hash(hll::hash(scratch));
            }
            numeric => {
                let Some(x) = input.as_f64() else { return };
                match numeric {
                    Partial::Sum { sum, comp } => neumaier(sum, comp, x),
                    Partial::Mean { sum, comp, n } => {
                        neumaier(sum, comp, x);
                        *n += 1;
                    }
                    Partial::Min(m) => *m = Some(m.map_or(x, |m| m.min(x))),
                    Partial::Max(m) => *m = Some(m.map_or(x, |m| m.max(x))),
                    Partial::Stddev { n, mean, m2 } => {
                        *n += 1;
                        let delta = x - *mean;
                        *mean += delta / *n as f64;
                        *m2 += delta * (x - *mean);
                    }
                    Partial::Count(_) | Partial::Last(_) | Partial::Distinct(_) => {}
                }
            }
        }
    }

    /// The feature value of this partial merged with `other` (of the same operation), without
    /// building the merged partial: equal to `merge` then `finish`, and allocation-free for the
    /// partials that own memory (`last`, `distinct_count`).
    pub fn finish_merged(&self, other: &Partial) -> Value {
        match (self, other) {
            (Partial::Last(mine), Partial::Last(theirs)) => {
                let newer = match (mine, theirs) {
                    (Some(a), Some(b)) if (b.time, b.seq) >= (a.time, a.seq) => theirs,
                    (None, _) => theirs,
                    _ => mine,
                };
                newer.as_ref().map_or(Value::Null, |l| l.value.clone())
            }
            (Partial::Distinct(mine), Partial::Distinct(theirs)) => {
                Value::Int(mine.union_estimate(theirs))
            }
            _ => {
                let mut merged = self.clone();
                merged.merge(other);
                merged.finish()
            }
        }
    }

    /// The merge of `parts` (partials of `op`) in their order: equal to merging them one by
    /// one into an empty partial, with distinct counts folded at once ([`Hll::union_all`]).
    pub fn merged<'a>(op: Op, parts: impl IntoIterator<Item = &'a Partial>) -> Partial {
        if op == Op::DistinctCount {
            return Partial::Distinct(Hll::union_all(parts.into_iter().filter_map(
                |part| match part {
                    Partial::Distinct(sketch) => Some(sketch),
                    _ => None,
                },
            )));
        }
        let mut merged = Partial::new(op);
        for part in parts {
            merged.merge(part);
        }
        merged
    }

    /// Absorbs another partial of the same operation.
    pub fn merge(&mut self, other: &Partial) {
        match (self, other) {
            (Partial::Count(a), Partial::Count(b)) => *a += b,
            (Partial::Sum { sum, comp }, Partial::Sum { sum: s, comp: c }) => {
                neumaier(sum, comp, *s);
                *comp += c;
            }
            (
                Partial::Mean { sum, comp, n },
                Partial::Mean {
                    sum: s,
                    comp: c,
                    n: m,
                },
            ) => {
                neumaier(sum, comp, *s);
                *comp += c;
                *n += m;
            }
            (Partial::Min(a), Partial::Min(Some(b))) => *a = Some(a.map_or(*b, |a| a.min(*b))),
            (Partial::Max(a), Partial::Max(Some(b))) => *a = Some(a.map_or(*b, |a| a.max(*b))),
            (Partial::Last(a), Partial::Last(Some(b)))
                if a.as_ref()
                    .is_none_or(|a| (b.time, b.seq) >= (a.time, a.seq)) =>
            {
                *a = Some(b.clone());
            }
            (Partial::Distinct(a), Partial::Distinct(b)) => a.merge(b),
            (
                Partial::Stddev { n, mean, m2 },
                Partial::Stddev {
                    n: nb,
                    mean: mb,
                    m2: m2b,
                },
            ) => {
                if *nb == 0 {
                    return;
                }
                if *n == 0 {
                    (*n, *mean, *m2) = (*nb, *mb, *m2b);
                    return;
                }
                let total = *n + nb;
                let delta = mb - *mean;
                *mean += delta * *nb as f64 / total as f64;
                *m2 += m2b + delta * delta * (*n as f64) * (*nb as f64) / total as f64;
                *n = total;
            }
            // Mismatched operations cannot happen: partials are laid out by the same plan.
            _ => {}
        }
    }

    /// The feature value. Empty: 0 for `count`, `sum`, `distinct_count`; null otherwise.
    pub fn finish(&self) -> Value {
        match self {
            Partial::Count(n) => Value::Int(*n as i64),
            Partial::Sum { sum, comp } => Value::Float(sum + comp),
            Partial::Mean { sum, comp, n } => {
                if *n == 0 {
                    Value::Null
                } else {
                    Value::Float((sum + comp) / *n as f64)
                }
            }
            Partial::Min(m) | Partial::Max(m) => m.map_or(Value::Null, Value::Float),
            Partial::Last(l) => l.as_ref().map_or(Value::Null, |l| l.value.clone()),
            Partial::Distinct(sketch) => Value::Int(sketch.estimate()),
            Partial::Stddev { n, m2, .. } => {
                if *n == 0 {
                    Value::Null
                } else {
                    Value::Float((m2 / *n as f64).max(0.0).sqrt())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_takes_32_bytes() {
        // A tile holds one partial per aggregation of its group, and every cached entity
        // holds tiles: their size is most of the state's memory.
        assert_eq!(std::mem::size_of::<Partial>(), 32);
    }

    fn run(op: Op, inputs: &[Value]) -> Value {
        let mut p = Partial::new(op);
        let mut scratch = Vec::new();
        for (i, v) in inputs.iter().enumerate() {
            p.add(
                Input::from(v),
                1_000 * i as i64,
                (0, i as i64),
                &mut scratch,
            );
        }
        p.finish()
    }

    fn floats(xs: &[f64]) -> Vec<Value> {
        xs.iter().map(|x| Value::Float(*x)).collect()
    }

    #[test]
    fn empty_windows_give_zero_or_null() {
        assert_eq!(run(Op::Count, &[]), Value::Int(0));
        assert_eq!(run(Op::Sum, &[]), Value::Float(0.0));
        assert_eq!(run(Op::DistinctCount, &[]), Value::Int(0));
        for op in [Op::Mean, Op::Min, Op::Max, Op::Last, Op::Stddev] {
            assert_eq!(run(op, &[]), Value::Null, "{op:?}");
        }
    }

    #[test]
    fn each_operation_computes_its_value() {
        let xs = floats(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(run(Op::Count, &xs), Value::Int(8));
        assert_eq!(run(Op::Sum, &xs), Value::Float(40.0));
        assert_eq!(run(Op::Mean, &xs), Value::Float(5.0));
        assert_eq!(run(Op::Min, &xs), Value::Float(2.0));
        assert_eq!(run(Op::Max, &xs), Value::Float(9.0));
        assert_eq!(run(Op::Stddev, &xs), Value::Float(2.0), "population stddev");
        assert_eq!(run(Op::Last, &xs), Value::Float(9.0));
        assert_eq!(run(Op::DistinctCount, &xs), Value::Int(5));
        // Nulls are skipped by everything but count.
        let with_null = vec![Value::Float(1.0), Value::Null, Value::Float(3.0)];
        assert_eq!(run(Op::Count, &with_null), Value::Int(3));
        assert_eq!(run(Op::Mean, &with_null), Value::Float(2.0));
        assert_eq!(run(Op::Last, &with_null), Value::Float(3.0));
    }

    #[test]
    fn last_prefers_event_time_then_arrival() {
        let mut p = Partial::new(Op::Last);
        let mut s = Vec::new();
        p.add(Input::Str("FR"), 2_000, (0, 1), &mut s);
        p.add(Input::Str("DE"), 1_000, (0, 2), &mut s); // older event, later arrival
        assert_eq!(p.finish(), Value::Str("FR".into()));
        p.add(Input::Str("ES"), 2_000, (0, 3), &mut s); // tie on time: later arrival wins
        assert_eq!(p.finish(), Value::Str("ES".into()));
    }

    #[test]
    fn merging_split_inputs_equals_one_pass() {
        let xs: Vec<f64> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f64 * 0.37 + 1e6)
            .collect();
        for op in [
            Op::Count,
            Op::Sum,
            Op::Mean,
            Op::Min,
            Op::Max,
            Op::Stddev,
            Op::DistinctCount,
        ] {
            let whole = run(op, &floats(&xs));
            let mut merged = Partial::new(op);
            let mut s = Vec::new();
            for chunk in xs.chunks(97) {
                let mut part = Partial::new(op);
                for x in chunk {
                    part.add(Input::Float(*x), 0, (0, 0), &mut s);
                }
                merged.merge(&part);
            }
            match (whole, merged.finish()) {
                (Value::Float(a), Value::Float(b)) => assert!(
                    (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                    "{op:?}: {a} vs {b}"
                ),
                (a, b) => assert_eq!(a, b, "{op:?}"),
            }
        }
    }
}
