//! The training baseline a model is monitored against: per input feature, a compact reference
//! of the training split (numeric: decile edges, moments and a deterministic sample of at most
//! [`SAMPLE`] values; categorical: category frequencies), and the distribution of the model's
//! scores on the test split (out of sample). Stored beside the model in the registry (`baseline.json`); pure, so
//! every rule is unit-tested here.
//!
//! What a drift test needs is kept, not decided: the number of distinct values (capped at
//! [`DISTINCT_CAP`]) lets the monitor choose between a numeric test and a categorical one
//! (Evidently's rule: numeric with more than 5 distinct values), and the sample bounds the
//! two-sample tests' reference at 1 000 rows.

use std::collections::{BTreeMap, BTreeSet};

use quiver_features::Value;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Values kept per numeric reference (the two-sample tests' reference size).
pub const SAMPLE: usize = 1_000;
/// Distinct values counted at most (past it, "many").
pub const DISTINCT_CAP: usize = 64;
/// Categories kept by frequency; the others are summed under [`OTHER`].
pub const CATEGORIES: usize = 100;
/// The bucket of the categories past the [`CATEGORIES`] most frequent.
pub const OTHER: &str = "__other__";

/// The baseline of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Rows of the training split it was computed on.
    pub rows: usize,
    /// One reference per input feature, in model order.
    pub features: Vec<FeatureReference>,
    /// The model's scores on the test split (out of sample).
    pub scores: NumericReference,
}

/// One input feature's reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureReference {
    /// Feature name (`<view>__<feature>`).
    pub feature: String,
    /// Its values.
    pub reference: Reference,
}

/// A feature's values in the training split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reference {
    /// Numbers (and booleans, as 0/1).
    Numeric(NumericReference),
    /// Strings.
    Categorical(CategoricalReference),
}

/// A numeric column's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericReference {
    /// Values present.
    pub count: usize,
    /// Values missing (null, or not a number).
    pub missing: usize,
    /// Distinct values, counted up to [`DISTINCT_CAP`].
    pub distinct: usize,
    /// Mean (0 when there is no value).
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// The 0 %, 10 %, …, 100 % quantiles (nearest rank); empty when there is no value.
    pub deciles: Vec<f64>,
    /// At most [`SAMPLE`] of the values, drawn without replacement with a fixed seed, sorted.
    pub sample: Vec<f64>,
}

/// A categorical column's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalReference {
    /// Values present.
    pub count: usize,
    /// Values missing.
    pub missing: usize,
    /// Distinct values, counted up to [`DISTINCT_CAP`].
    pub distinct: usize,
    /// Count of each of the [`CATEGORIES`] most frequent categories (ties by name), the rest
    /// under [`OTHER`].
    pub frequencies: BTreeMap<String, usize>,
}

impl Baseline {
    /// The baseline of `columns` (one per feature, named by `features`, the training split's)
    /// and of the model's `scores` (on the test split).
    pub fn of(features: &[String], columns: &[Vec<Value>], scores: &[f64], seed: u64) -> Self {
        let rows = columns.first().map_or(scores.len(), Vec::len);
        Self {
            rows,
            features: features
                .iter()
                .zip(columns)
                .map(|(feature, column)| FeatureReference {
                    feature: feature.clone(),
                    reference: Reference::of(column, seed),
                })
                .collect(),
            scores: NumericReference::of(scores.iter().copied(), scores.len(), seed),
        }
    }
}

impl Reference {
    /// Categorical when the column holds strings, numeric otherwise.
    pub fn of(column: &[Value], seed: u64) -> Self {
        if column.iter().any(|v| matches!(v, Value::Str(_))) {
            Self::Categorical(CategoricalReference::of(column))
        } else {
            let numbers = column.iter().filter_map(number);
            Self::Numeric(NumericReference::of(numbers, column.len(), seed))
        }
    }
}

/// A value as a number: floats that are finite, integers, booleans as 0/1.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    }
}

impl NumericReference {
    /// The summary of `values` out of `total` rows (the others are missing).
    pub fn of(values: impl Iterator<Item = f64>, total: usize, seed: u64) -> Self {
        let mut sorted: Vec<f64> = values.filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len();
        let mean = if count == 0 {
            0.0
        } else {
            sorted.iter().sum::<f64>() / count as f64
        };
        let std = if count == 0 {
            0.0
        } else {
            (sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count as f64).sqrt()
        };
        let mut distinct = 0;
        let mut previous = None;
        for v in &sorted {
            if previous != Some(*v) {
                distinct += 1;
                previous = Some(*v);
                if distinct == DISTINCT_CAP {
                    break;
                }
            }
        }
        let deciles = if count == 0 {
            Vec::new()
        } else {
            (0..=10)
                .map(|d| nearest_rank(&sorted, d as f64 / 10.0))
                .collect()
        };
        let sample = if count <= SAMPLE {
            sorted.clone()
        } else {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut picked: Vec<f64> = sample(&mut rng, count, SAMPLE)
                .into_iter()
                .map(|i| sorted[i])
                .collect();
            picked.sort_by(f64::total_cmp);
            picked
        };
        Self {
            count,
            missing: total.saturating_sub(count),
            distinct,
            mean,
            std,
            deciles,
            sample,
        }
    }
}

/// The `q` quantile of sorted, non-empty `values` by nearest rank.
pub fn nearest_rank(values: &[f64], q: f64) -> f64 {
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

impl CategoricalReference {
    /// The summary of a column of strings (other values count as missing).
    pub fn of(column: &[Value]) -> Self {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for value in column {
            if let Value::Str(s) = value {
                *counts.entry(s.as_str()).or_default() += 1;
            }
        }
        let count = counts.values().sum();
        let distinct = counts.len().min(DISTINCT_CAP);
        let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut frequencies: BTreeMap<String, usize> = BTreeMap::new();
        let kept: BTreeSet<&str> = ranked.iter().take(CATEGORIES).map(|(c, _)| *c).collect();
        for (category, n) in ranked {
            let name = if kept.contains(category) {
                category
            } else {
                OTHER
            };
            *frequencies.entry(name.to_string()).or_default() += n;
        }
        Self {
            count,
            missing: column.len() - count,
            distinct,
            frequencies,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(values: impl IntoIterator<Item = f64>) -> Vec<Value> {
        values.into_iter().map(Value::Float).collect()
    }

    #[test]
    fn a_numeric_reference_has_the_deciles_moments_and_a_capped_sorted_sample() {
        // 1..=2000 and two missing values.
        let mut column = floats((1..=2_000).map(f64::from));
        column.extend([Value::Null, Value::Float(f64::NAN)]);
        let Reference::Numeric(r) = Reference::of(&column, 7) else {
            panic!("numbers make a numeric reference");
        };
        assert_eq!((r.count, r.missing, r.distinct), (2_000, 2, DISTINCT_CAP));
        assert_eq!(r.deciles.first(), Some(&1.0));
        assert_eq!(r.deciles[5], 1_000.0, "median by nearest rank");
        assert_eq!(r.deciles.last(), Some(&2_000.0));
        assert!((r.mean - 1_000.5).abs() < 1e-9);
        assert!((r.std - (2_000f64.powi(2) - 1.0).sqrt() / 12f64.sqrt()).abs() < 1e-6);
        assert_eq!(r.sample.len(), SAMPLE);
        assert!(
            r.sample.windows(2).all(|w| w[0] < w[1]),
            "sorted, drawn without replacement"
        );
        assert_eq!(
            Reference::of(&column, 7),
            Reference::Numeric(r),
            "the same seed draws the same sample"
        );
    }

    #[test]
    fn few_distinct_values_are_counted_exactly_and_kept_whole() {
        let column: Vec<Value> = [0, 1, 1, 0, 1].map(Value::Int).into();
        let Reference::Numeric(r) = Reference::of(&column, 1) else {
            panic!("integers are numeric");
        };
        assert_eq!((r.count, r.distinct), (5, 2));
        assert_eq!(r.sample, vec![0.0, 0.0, 1.0, 1.0, 1.0]);
        let empty = NumericReference::of(std::iter::empty(), 3, 1);
        assert_eq!((empty.count, empty.missing, empty.mean), (0, 3, 0.0));
        assert!(empty.deciles.is_empty() && empty.sample.is_empty());
    }

    #[test]
    fn a_categorical_reference_keeps_the_most_frequent_categories_and_sums_the_rest() {
        let mut column: Vec<Value> = Vec::new();
        for i in 0..(CATEGORIES + 5) {
            for _ in 0..=(i % 3) {
                column.push(Value::Str(format!("c{i:03}")));
            }
        }
        column.push(Value::Null);
        let Reference::Categorical(r) = Reference::of(&column, 1) else {
            panic!("strings make a categorical reference");
        };
        assert_eq!(r.missing, 1);
        assert_eq!(r.count, column.len() - 1);
        assert_eq!(r.distinct, DISTINCT_CAP);
        assert_eq!(
            r.frequencies.len(),
            CATEGORIES + 1,
            "kept ones plus the rest"
        );
        assert_eq!(r.frequencies.values().sum::<usize>(), r.count);
        assert_eq!(r.frequencies["c002"], 3);
        assert!(r.frequencies[OTHER] >= 5, "the least frequent are summed");
    }

    #[test]
    fn a_baseline_has_one_reference_per_feature_and_the_scores() {
        let features = vec!["v__a".to_string(), "v__b".to_string()];
        let columns = vec![
            floats([1.0, 2.0, 3.0]),
            vec![Value::Str("x".into()), Value::Str("y".into()), Value::Null],
        ];
        let baseline = Baseline::of(&features, &columns, &[0.1, 0.5, 0.9], 42);
        assert_eq!(baseline.rows, 3);
        assert_eq!(baseline.features.len(), 2);
        assert!(matches!(
            baseline.features[1].reference,
            Reference::Categorical(_)
        ));
        assert_eq!(baseline.scores.deciles[5], 0.5);
        let json = serde_json::to_string(&baseline).unwrap();
        assert!(json.contains("\"kind\":\"numeric\""), "{json}");
        assert_eq!(serde_json::from_str::<Baseline>(&json).unwrap(), baseline);
    }
}
