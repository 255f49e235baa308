//! One deployed model's report over a window of its predictions: how much it served and how
//! fast, how each input (and its scores) drifted from the training baseline, and how well it
//! performed — realised on the predictions whose labels arrived, estimated from its calibrated
//! scores, next to its test-split metrics. Pure: the caller gathers the window's observations.
//!
//! Field names are the report's JSON (`quiver monitor report --json`), so they are stable.

use std::collections::{BTreeMap, BTreeSet};

use quiver_features::Value;
use quiver_models::baseline::{Baseline, Reference};
use quiver_models::metrics::{Metrics, evaluate_sorted, sort_pairs};
use serde::{Deserialize, Serialize};

use crate::drift::{Current, Drift, drift, drift_share, numeric};
use crate::estimate::estimated_roc_auc;

/// One prediction in the window, with its label if it arrived (what the batch report reads
/// from the stores; [`Window::of`] gathers them).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The model's score.
    pub score: f64,
    /// Its decision.
    pub decision: bool,
    /// The features it was scored with, by name (`<view>__<feature>`).
    pub features: BTreeMap<String, Value>,
    /// The observed label, once joined.
    pub label: Option<bool>,
    /// Event time → prediction time (ms).
    pub latency_ms: f64,
}

/// What monitoring saw of one model over a window: every prediction's score, decision, latency
/// and label (once joined), and its inputs — all of them, or a uniform sample of them when the
/// live monitor bounds its memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// Predictions made in the window.
    pub served: usize,
    /// Positive decisions among them.
    pub positive: usize,
    /// Their event → prediction latencies (ms).
    pub latencies_ms: Vec<f64>,
    /// Their scores.
    pub scores: Vec<f64>,
    /// `(score, label)` of those whose label arrived.
    pub joined: Vec<(f64, bool)>,
    /// The inputs' names: the columns of `rows`.
    pub inputs: Vec<String>,
    /// Input rows of (a sample of) the predictions, one value per name of `inputs`.
    pub rows: Vec<Vec<Value>>,
}

impl Window {
    /// The window of these predictions, every input row kept.
    pub fn of(observations: &[Observation]) -> Self {
        let inputs: Vec<String> = observations
            .iter()
            .flat_map(|o| o.features.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        Self {
            served: observations.len(),
            positive: observations.iter().filter(|o| o.decision).count(),
            latencies_ms: observations.iter().map(|o| o.latency_ms).collect(),
            scores: observations.iter().map(|o| o.score).collect(),
            joined: observations
                .iter()
                .filter_map(|o| o.label.map(|l| (o.score, l)))
                .collect(),
            rows: observations
                .iter()
                .map(|o| {
                    inputs
                        .iter()
                        .map(|name| o.features.get(name).cloned().unwrap_or(Value::Null))
                        .collect()
                })
                .collect(),
            inputs,
        }
    }

    /// The values of input `name` over the rows (none if it is not an input).
    fn column(&self, name: &str) -> impl Iterator<Item = &Value> {
        let index = self.inputs.iter().position(|i| i == name);
        self.rows
            .iter()
            .filter_map(move |row| index.and_then(|i| row.get(i)))
    }
}

/// How the report is built.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Rows a window needs before drift or realised performance is reported.
    pub min_rows: usize,
    /// The inputs that are lifetime aggregates (`<view>__<feature>` with a lifetime window):
    /// they grow by construction, so they drift by construction — reported, but left out of
    /// the drift share unless `lifetime_in_share`.
    pub lifetime: BTreeSet<String>,
    /// Whether lifetime aggregates count in the drift share.
    pub lifetime_in_share: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_rows: 200,
            lifetime: BTreeSet::new(),
            lifetime_in_share: false,
        }
    }
}

/// One input's drift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    /// Feature name.
    pub feature: String,
    /// The test, its statistic and threshold, and the verdict.
    #[serde(flatten)]
    pub drift: Drift,
    /// Whether it counts in the drift share.
    pub in_share: bool,
}

/// Latency percentiles (ms).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// One model's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    /// Model id.
    pub model_id: String,
    /// `production`, `canary` or `shadow`.
    pub variant: String,
    /// Predictions in the window.
    pub served: usize,
    /// Positive decisions among them.
    pub positive_decisions: usize,
    /// Event → prediction latency.
    pub latency: Option<Latency>,
    /// Per input, in model order (empty below `min_rows`).
    pub drift: Vec<FeatureDrift>,
    /// Share of the inputs in the share that drifted.
    pub drift_share: Option<f64>,
    /// The scores' drift against the test split's.
    pub score_drift: Option<Drift>,
    /// Predictions whose label arrived.
    pub labels_joined: usize,
    /// Predictions still waiting for theirs.
    pub labels_pending: usize,
    /// Metrics on the joined predictions at the model's threshold (`None` below `min_rows` or
    /// with one class only).
    pub realised: Option<Metrics>,
    /// ROC AUC expected from the window's scores (CBPE).
    pub estimated_roc_auc: Option<f64>,
    /// The model's test-split metrics, for comparison.
    pub test: Metrics,
}

impl ModelReport {
    /// The inputs that drifted, in model order.
    pub fn drifted(&self) -> impl Iterator<Item = &FeatureDrift> {
        self.drift.iter().filter(|d| d.drift.drifted)
    }
}

/// The report of one model over `window`.
pub fn report(
    model_id: &str,
    variant: &str,
    baseline: &Baseline,
    test: &Metrics,
    window: &Window,
    settings: &Settings,
) -> ModelReport {
    let enough = window.served >= settings.min_rows;
    let drift_rows: Vec<FeatureDrift> = if enough {
        baseline
            .features
            .iter()
            .filter_map(|f| {
                let d = feature_drift(&f.reference, baseline.rows, window.column(&f.feature))?;
                let lifetime = settings.lifetime.contains(&f.feature);
                Some(FeatureDrift {
                    feature: f.feature.clone(),
                    drift: d,
                    in_share: settings.lifetime_in_share || !lifetime,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let share = drift_share(drift_rows.iter().filter(|f| f.in_share).map(|f| &f.drift));
    // Sorted once here (in near-linear time: the tracker hands them over as sorted runs); the
    // score drift and the estimate sort again, in linear time.
    let mut sorted_scores = window.scores.clone();
    sorted_scores.sort_by(f64::total_cmp);
    let scores = &sorted_scores;
    let joined = &window.joined;
    let realised = (joined.len() >= settings.min_rows
        && joined.iter().any(|(_, l)| *l)
        && joined.iter().any(|(_, l)| !*l))
    .then(|| {
        let mut pairs = joined.clone();
        sort_pairs(&mut pairs);
        evaluate_sorted(&pairs, test.threshold)
    });
    ModelReport {
        model_id: model_id.to_string(),
        variant: variant.to_string(),
        served: window.served,
        positive_decisions: window.positive,
        latency: latency(&window.latencies_ms),
        drift: drift_rows,
        drift_share: share.map(|(s, _)| s),
        score_drift: enough
            .then(|| numeric(&baseline.scores, baseline.scores.count, scores))
            .flatten(),
        labels_joined: joined.len(),
        labels_pending: window.served.saturating_sub(joined.len()),
        realised,
        estimated_roc_auc: if enough {
            estimated_roc_auc(scores)
        } else {
            None
        },
        test: test.clone(),
    }
}

/// One input's drift over the window (its values as the model read them).
fn feature_drift<'a>(
    reference: &Reference,
    rows: usize,
    values: impl Iterator<Item = &'a Value>,
) -> Option<Drift> {
    match reference {
        Reference::Numeric(_) => {
            // Booleans as 0/1, as the baseline keeps them.
            let numbers: Vec<f64> = values
                .filter_map(|v| match v {
                    Value::Bool(b) => Some(f64::from(u8::from(*b))),
                    other => other.as_f64(),
                })
                .collect();
            drift(reference, rows, &Current::Numeric(&numbers))
        }
        Reference::Categorical(_) => {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for v in values {
                if let Value::Str(s) = v {
                    *counts.entry(s.clone()).or_default() += 1;
                }
            }
            drift(reference, rows, &Current::Categorical(&counts))
        }
    }
}

/// Nearest-rank percentiles of the window's latencies.
fn latency(latencies_ms: &[f64]) -> Option<Latency> {
    let mut ms: Vec<f64> = latencies_ms
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if ms.is_empty() {
        return None;
    }
    // Two selections instead of a sort: the window can hold millions.
    Some(Latency {
        p50_ms: selected_rank(&mut ms, 0.5),
        p99_ms: selected_rank(&mut ms, 0.99),
    })
}

/// The nearest-rank percentile (`quiver_models::baseline::nearest_rank`) of unsorted, non-empty `values`, by selection (reorders them).
fn selected_rank(values: &mut [f64], q: f64) -> f64 {
    let rank = (q * values.len() as f64).ceil() as usize;
    let index = rank.clamp(1, values.len()) - 1;
    *values.select_nth_unstable_by(index, f64::total_cmp).1
}

#[cfg(test)]
mod tests {
    use quiver_models::baseline::nearest_rank;
    use quiver_models::metrics::roc_auc;

    use super::*;

    const FEATURES: [&str; 3] = ["v__amount", "v__country", "v__count_lifetime"];

    /// The i-th row of a stream; `shift` moves the amount and the country mix.
    fn row(i: usize, shift: bool) -> (f64, &'static str, f64) {
        let amount = ((i * 37) % 101) as f64 + if shift { 60.0 } else { 0.0 };
        let country = match (i % 10, shift) {
            (0..=6, false) | (0..=2, true) => "FR",
            _ => "DE",
        };
        (amount, country, i as f64)
    }

    fn baseline() -> Baseline {
        let mut columns = vec![Vec::new(), Vec::new(), Vec::new()];
        for i in 0..800 {
            let (a, c, n) = row(i, false);
            columns[0].push(Value::Float(a));
            columns[1].push(Value::Str(c.into()));
            columns[2].push(Value::Float(n));
        }
        let scores: Vec<f64> = (0..800).map(|i| f64::from(i % 100) / 100.0).collect();
        let names: Vec<String> = FEATURES.iter().map(|f| f.to_string()).collect();
        Baseline::of(&names, &columns, &scores, 3)
    }

    fn settings() -> Settings {
        Settings {
            lifetime: BTreeSet::from(["v__count_lifetime".to_string()]),
            ..Settings::default()
        }
    }

    /// The report of `observations` for the baseline above.
    fn reported(observations: &[Observation], settings: &Settings) -> ModelReport {
        report(
            "m",
            "production",
            &baseline(),
            &test_metrics(),
            &Window::of(observations),
            settings,
        )
    }

    fn test_metrics() -> Metrics {
        let scores = [0.9, 0.8, 0.2, 0.1];
        quiver_models::metrics::evaluate(&scores, &[true, true, false, false], 0.5)
    }

    fn window(n: usize, shift: bool, labelled: usize) -> Vec<Observation> {
        (0..n)
            .map(|i| {
                let (a, c, _) = row(i * 7 + 3, shift);
                let score = f64::from(((i * 13) % 100) as u32) / 100.0;
                let features = BTreeMap::from([
                    ("v__amount".to_string(), Value::Float(a)),
                    ("v__country".to_string(), Value::Str(c.into())),
                    // A lifetime count only grows: far past anything in training.
                    (
                        "v__count_lifetime".to_string(),
                        Value::Float(10_000.0 + i as f64),
                    ),
                ]);
                Observation {
                    score,
                    decision: score >= 0.5,
                    features,
                    label: (i < labelled).then_some(i % 3 == 0),
                    latency_ms: (i % 50) as f64,
                }
            })
            .collect()
    }

    #[test]
    fn percentiles_by_selection_are_the_nearest_ranks() {
        let values: Vec<f64> = (0..1_001).map(|i| f64::from((i * 7_919) % 1_001)).collect();
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.5, 0.99, 1.0] {
            let mut v = values.clone();
            assert_eq!(selected_rank(&mut v, q), nearest_rank(&sorted, q), "{q}");
        }
    }

    #[test]
    fn without_a_shift_only_the_lifetime_count_drifts_and_it_stays_out_of_the_share() {
        let r = reported(&window(400, false, 0), &settings());
        let drifted: Vec<&str> = r.drifted().map(|d| d.feature.as_str()).collect();
        assert_eq!(drifted, ["v__count_lifetime"], "{:?}", r.drift);
        assert_eq!(r.drift_share, Some(0.0));
        assert_eq!((r.served, r.labels_joined, r.labels_pending), (400, 0, 400));
        assert_eq!(r.realised, None, "no label yet");
        assert!(r.estimated_roc_auc.is_some());
        let latency = r.latency.unwrap();
        assert_eq!((latency.p50_ms, latency.p99_ms), (24.0, 49.0));
    }

    #[test]
    fn a_shift_of_one_numeric_and_one_categorical_input_flags_exactly_those() {
        let r = reported(&window(400, true, 0), &settings());
        let flagged: Vec<(&str, bool)> = r
            .drift
            .iter()
            .map(|d| (d.feature.as_str(), d.drift.drifted))
            .collect();
        assert_eq!(
            flagged,
            [
                ("v__amount", true),
                ("v__country", true),
                ("v__count_lifetime", true)
            ]
        );
        assert_eq!(r.drift_share, Some(1.0), "both inputs in the share drifted");
        let with_lifetime = Settings {
            lifetime_in_share: true,
            ..settings()
        };
        let all = reported(&window(400, true, 0), &with_lifetime);
        assert!(all.drift.iter().all(|d| d.in_share));
    }

    #[test]
    fn realised_metrics_are_those_of_the_joined_predictions_and_small_windows_say_nothing() {
        let observations = window(600, false, 450);
        let r = reported(&observations, &settings());
        let (s, l): (Vec<f64>, Vec<bool>) = observations
            .iter()
            .filter_map(|o| o.label.map(|l| (o.score, l)))
            .unzip();
        let realised = r.realised.clone().unwrap();
        assert_eq!(realised.rows, 450);
        assert!((realised.roc_auc - roc_auc(&s, &l)).abs() < 1e-12);
        assert_eq!(realised.threshold, 0.5, "the model's threshold");
        assert_eq!((r.labels_joined, r.labels_pending), (450, 150));
        let small = reported(&window(50, true, 50), &settings());
        assert!(small.drift.is_empty() && small.drift_share.is_none());
        assert!(small.realised.is_none() && small.score_drift.is_none());
        assert_eq!(small.served, 50);
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "model_id",
            "variant",
            "served",
            "drift",
            "drift_share",
            "labels_joined",
            "realised",
            "estimated_roc_auc",
            "test",
        ] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
        assert!(
            json["drift"][0].get("test").is_some() && json["drift"][0].get("statistic").is_some()
        );
    }
}
