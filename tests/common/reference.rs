//! A brute-force reference for the demo views: straight from the definition in
//! `../shared/DESIGN.md` (window rule, per-shard lateness, `last` ordering), over a plain list of
//! events, with no tiles, sketches or merging. Tests compare Quiver's answers with it.

use std::collections::{BTreeMap, BTreeSet};

use quiver_features::{FeatureView, Op, Window};
use serde_json::{Value, json};

/// One transaction as produced, with where it landed.
#[derive(Debug, Clone)]
pub struct Ev {
    pub time: i64,
    pub partition: i32,
    pub offset: i64,
    pub user: String,
    pub merchant: String,
    pub amount: f64,
    pub country: String,
}

impl Ev {
    fn key(&self, column: &str) -> &str {
        match column {
            "user_id" => &self.user,
            "merchant_id" => &self.merchant,
            other => panic!("unexpected entity column {other}"),
        }
    }
}

/// The entity's events that are not late, in arrival order. Lateness is judged per
/// (entity, partition) shard, against the shard's greatest event time so far. `upto` limits
/// each partition to offsets at or below its bound (absent partitions: nothing).
pub fn kept<'a>(
    view: &FeatureView,
    events: &'a [Ev],
    entity: &str,
    upto: Option<&BTreeMap<i32, i64>>,
) -> Vec<&'a Ev> {
    let mut max: BTreeMap<i32, i64> = BTreeMap::new();
    let mut out = Vec::new();
    let mut ordered: Vec<&Ev> = events
        .iter()
        .filter(|e| e.key(&view.entity) == entity)
        .collect();
    ordered.sort_by_key(|e| (e.partition, e.offset));
    for e in ordered {
        if let Some(bounds) = upto {
            match bounds.get(&e.partition) {
                Some(b) if e.offset <= *b => {}
                _ => continue,
            }
        }
        let m = max.entry(e.partition).or_insert(e.time);
        if e.time < *m - view.allowed_lateness {
            continue;
        }
        *m = (*m).max(e.time);
        out.push(e);
    }
    out
}

/// An expected value and the relative tolerance of the comparison.
#[derive(Debug, Clone)]
pub struct Expect {
    pub value: Value,
    pub tolerance: f64,
}

/// Relative tolerance for floats (compensated sums vs plain ones).
const FLOAT: f64 = 1e-9;
/// HyperLogLog at precision 12 has a 1.6 % standard error; the reference counts exactly.
const DISTINCT: f64 = 0.04;

/// Expected feature values of `kept` events read at `t`.
pub fn expected(view: &FeatureView, kept: &[&Ev], t: i64) -> BTreeMap<String, Expect> {
    let mut out = BTreeMap::new();
    for agg in &view.aggregations {
        let inside: Vec<&&Ev> = kept
            .iter()
            .filter(|e| match agg.window {
                Window::Lifetime => true,
                Window::Sliding { size, hop } => {
                    (t - size).div_euclid(hop) * hop <= e.time && e.time <= t
                }
            })
            .collect();
        let xs: Vec<f64> = inside.iter().map(|e| e.amount).collect();
        let n = xs.len() as f64;
        let value = match agg.op {
            Op::Count => json!(inside.len()),
            Op::Sum => json!(xs.iter().sum::<f64>()),
            // The others are null over an empty window.
            _ if xs.is_empty() && agg.op != Op::DistinctCount && agg.op != Op::Last => Value::Null,
            Op::Mean => json!(xs.iter().sum::<f64>() / n),
            Op::Min => json!(xs.iter().cloned().fold(f64::INFINITY, f64::min)),
            Op::Max => json!(xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max)),
            Op::Stddev => {
                let mean = xs.iter().sum::<f64>() / n;
                json!((xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt())
            }
            Op::DistinctCount => {
                let column = agg.column.as_deref().unwrap_or_default();
                let set: BTreeSet<&str> = inside.iter().map(|e| e.key(column)).collect();
                json!(set.len())
            }
            Op::Last => {
                let last = inside
                    .iter()
                    .max_by_key(|e| (e.time, e.partition, e.offset));
                last.map_or(Value::Null, |e| json!(e.country))
            }
        };
        let tolerance = if agg.op == Op::DistinctCount {
            DISTINCT
        } else {
            FLOAT
        };
        out.insert(agg.name.clone(), Expect { value, tolerance });
    }
    out
}

/// Differences between actual feature values and expected ones (floats: 1e-9 relative).
pub fn diff(
    actual: &serde_json::Map<String, Value>,
    expected: &BTreeMap<String, Expect>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (
        name,
        Expect {
            value: want,
            tolerance,
        },
    ) in expected
    {
        let have = actual.get(name).cloned().unwrap_or(Value::Null);
        let same = match (&have, want) {
            (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
                // Distinct counts also get an absolute slack: with ~50 values in 4 096 registers,
                // 3 collisions happen to ~0.3 % of entities, and a test checks hundreds; 5 or more
                // to about one in 10^7.
                (Some(a), Some(b)) => {
                    let slack = if *tolerance > FLOAT { 5.0 } else { 0.0 };
                    (a - b).abs() <= (tolerance * a.abs().max(b.abs()).max(1.0)).max(slack)
                }
                _ => a == b,
            },
            (a, b) => a == b,
        };
        if !same {
            out.push(format!("{name}: got {have}, expected {want}"));
        }
    }
    out
}
