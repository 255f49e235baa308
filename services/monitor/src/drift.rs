//! Drift of a feature (or of the scores) between the training baseline and a window of live
//! values, with Evidently's default choice of test:
//!
//! | reference rows | column | test | drift when |
//! |---|---|---|---|
//! | ≤ 1 000 | numeric, > 5 distinct values | two-sample Kolmogorov–Smirnov | p < 0.05 |
//! | ≤ 1 000 | at most two values | two-proportion Z-test | p < 0.05 |
//! | ≤ 1 000 | otherwise (categorical, ≤ 5 values) | chi-squared | p < 0.05 |
//! | > 1 000 | numeric, > 5 distinct values | Wasserstein distance ÷ the reference's std | ≥ 0.1 |
//! | > 1 000 | otherwise | Jensen–Shannon distance (natural log) | ≥ 0.1 |
//!
//! Distinct values are counted over the reference and the window together, as Evidently
//! does. A numeric reference is its baseline sample (at most 1 000 values, so the KS and Wasserstein
//! references are that sample); a numeric column with few values is compared as categories
//! counted in that sample. The KS p-value is the limiting Kolmogorov distribution's at
//! `√(nm/(n+m)) · D` (scipy's `kstwobign`); on the test vectors below it is within 0.014 of
//! scipy's exact two-sample p-value.

use std::collections::{BTreeMap, BTreeSet};

use quiver_models::baseline::{NumericReference, OTHER, Reference};
use serde::{Deserialize, Serialize};

use crate::stats::{chi2_sf, kolmogorov_sf, normal_sf};

/// p-values below this mean drift.
pub const P_VALUE: f64 = 0.05;
/// Distances at or above this mean drift.
pub const DISTANCE: f64 = 0.1;
/// References of at most this many rows get a statistical test; larger ones a distance.
pub const SMALL_REFERENCE: usize = 1_000;
/// Numeric columns with at most this many distinct values are compared as categories.
pub const FEW_VALUES: usize = 5;

/// A drift test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftTest {
    /// Two-sample Kolmogorov–Smirnov (p-value).
    Ks,
    /// Two-proportion Z-test (p-value).
    ZTest,
    /// Chi-squared goodness of fit of the current counts to the reference's proportions.
    ChiSquare,
    /// Wasserstein-1 distance over the reference's standard deviation.
    Wasserstein,
    /// Jensen–Shannon distance.
    JensenShannon,
}

impl DriftTest {
    /// Its name in JSON, the `monitor` table and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftTest::Ks => "ks",
            DriftTest::ZTest => "z_test",
            DriftTest::ChiSquare => "chi_square",
            DriftTest::Wasserstein => "wasserstein",
            DriftTest::JensenShannon => "jensen_shannon",
        }
    }
}

/// One drift measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// The test used.
    pub test: DriftTest,
    /// Its p-value (tests) or distance (distances).
    pub statistic: f64,
    /// The threshold it is compared with.
    pub threshold: f64,
    /// Whether it drifted.
    pub drifted: bool,
}

impl Drift {
    fn p_value(test: DriftTest, p: f64) -> Self {
        Self {
            test,
            statistic: p,
            threshold: P_VALUE,
            drifted: p < P_VALUE,
        }
    }

    fn distance(test: DriftTest, d: f64) -> Self {
        Self {
            test,
            statistic: d,
            threshold: DISTANCE,
            drifted: d >= DISTANCE,
        }
    }
}

/// What a window of live values of one column holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Current<'a> {
    /// Numbers.
    Numeric(&'a [f64]),
    /// Category counts.
    Categorical(&'a BTreeMap<String, usize>),
}

/// The drift of `current` against a baseline reference of `reference_rows` training rows;
/// `None` when either side is empty (or their kinds differ).
pub fn drift(reference: &Reference, reference_rows: usize, current: &Current<'_>) -> Option<Drift> {
    match (reference, current) {
        (Reference::Numeric(r), Current::Numeric(values)) => numeric(r, reference_rows, values),
        (Reference::Categorical(r), Current::Categorical(counts)) => {
            categorical(&r.frequencies, reference_rows, counts)
        }
        _ => None,
    }
}

/// The drift of numeric values.
pub fn numeric(
    reference: &NumericReference,
    reference_rows: usize,
    current: &[f64],
) -> Option<Drift> {
    let current: Vec<f64> = current.iter().copied().filter(|v| v.is_finite()).collect();
    if reference.sample.is_empty() || current.is_empty() {
        return None;
    }
    // Evidently counts distinct values over both sides together.
    let mut seen: BTreeSet<u64> = BTreeSet::new();
    for v in reference.sample.iter().chain(&current) {
        seen.insert(v.to_bits());
        if seen.len() > FEW_VALUES {
            break;
        }
    }
    if seen.len() <= FEW_VALUES {
        let counts = |values: &[f64]| {
            let mut out: BTreeMap<String, usize> = BTreeMap::new();
            for v in values {
                *out.entry(v.to_string()).or_default() += 1;
            }
            out
        };
        return categorical(
            &counts(&reference.sample),
            reference_rows,
            &counts(&current),
        );
    }
    let mut current = current;
    current.sort_by(f64::total_cmp);
    Some(if reference_rows <= SMALL_REFERENCE {
        let d = ks_statistic(&reference.sample, &current);
        let (n, m) = (reference.sample.len() as f64, current.len() as f64);
        Drift::p_value(DriftTest::Ks, kolmogorov_sf((n * m / (n + m)).sqrt() * d))
    } else {
        let norm = reference.std.max(0.001);
        Drift::distance(
            DriftTest::Wasserstein,
            wasserstein(&reference.sample, &current) / norm,
        )
    })
}

/// The drift of category counts against the reference's (`reference` as counts).
pub fn categorical(
    reference: &BTreeMap<String, usize>,
    reference_rows: usize,
    current: &BTreeMap<String, usize>,
) -> Option<Drift> {
    // Categories the reference summed under `__other__` are compared there.
    let mut observed: BTreeMap<&str, usize> = BTreeMap::new();
    for (category, n) in current {
        let key = if reference.contains_key(OTHER) && !reference.contains_key(category) {
            OTHER
        } else {
            category.as_str()
        };
        *observed.entry(key).or_default() += n;
    }
    let total_ref: usize = reference.values().sum();
    let total_cur: usize = observed.values().sum();
    if total_ref == 0 || total_cur == 0 {
        return None;
    }
    let keys: BTreeSet<&str> = reference
        .keys()
        .map(String::as_str)
        .chain(observed.keys().copied())
        .collect();
    let pairs: Vec<(f64, f64)> = keys
        .iter()
        .map(|k| {
            (
                reference.get(*k).copied().unwrap_or_default() as f64,
                observed.get(k).copied().unwrap_or_default() as f64,
            )
        })
        .collect();
    let (total_ref, total_cur) = (total_ref as f64, total_cur as f64);
    if reference_rows > SMALL_REFERENCE {
        let js = jensen_shannon(pairs.iter().map(|(r, c)| (r / total_ref, c / total_cur)));
        return Some(Drift::distance(DriftTest::JensenShannon, js));
    }
    if keys.len() <= 2 {
        let (x1, x2) = pairs[0];
        let p1 = x1 / total_ref;
        let p2 = x2 / total_cur;
        let pooled = (x1 + x2) / (total_ref + total_cur);
        let spread = (pooled * (1.0 - pooled) * (1.0 / total_ref + 1.0 / total_cur)).sqrt();
        let p = if spread == 0.0 {
            if p1 == p2 { 1.0 } else { 0.0 }
        } else {
            2.0 * normal_sf(((p1 - p2) / spread).abs())
        };
        return Some(Drift::p_value(DriftTest::ZTest, p));
    }
    let scale = total_cur / total_ref;
    let mut chi = 0.0;
    for (r, c) in &pairs {
        let expected = r * scale;
        if expected == 0.0 {
            // A category the training split never had: drift by definition (χ² is infinite).
            return Some(Drift::p_value(DriftTest::ChiSquare, 0.0));
        }
        chi += (c - expected).powi(2) / expected;
    }
    let df = (pairs.len() as f64 - 1.0).max(1.0);
    Some(Drift::p_value(DriftTest::ChiSquare, chi2_sf(chi, df)))
}

/// The largest distance between the empirical distribution functions of two sorted samples.
fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    let (n, m) = (a.len() as f64, b.len() as f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    d
}

/// The Wasserstein-1 distance of two sorted samples: the area between their distribution
/// functions.
fn wasserstein(a: &[f64], b: &[f64]) -> f64 {
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0, 0);
    let mut area = 0.0;
    let mut x = a[0].min(b[0]);
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(p), Some(q)) => p.min(*q),
            (Some(p), None) => *p,
            (None, Some(q)) => *q,
            (None, None) => break,
        };
        area += (i as f64 / n - j as f64 / m).abs() * (next - x);
        x = next;
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
    }
    area
}

/// The Jensen–Shannon distance (√ of the divergence, natural log) of two distributions given
/// as (p, q) per category.
fn jensen_shannon(pairs: impl Iterator<Item = (f64, f64)>) -> f64 {
    let mut divergence = 0.0;
    for (p, q) in pairs {
        let m = (p + q) / 2.0;
        if p > 0.0 {
            divergence += 0.5 * p * (p / m).ln();
        }
        if q > 0.0 {
            divergence += 0.5 * q * (q / m).ln();
        }
    }
    divergence.max(0.0).sqrt()
}

/// The share of drifted columns among `drifts`, and how many drifted (`None` for none).
pub fn drift_share<'a>(drifts: impl IntoIterator<Item = &'a Drift>) -> Option<(f64, usize)> {
    let (mut n, mut drifted) = (0usize, 0usize);
    for d in drifts {
        n += 1;
        drifted += usize::from(d.drifted);
    }
    (n > 0).then(|| (drifted as f64 / n as f64, drifted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) {
        assert!((a - b).abs() <= tolerance, "{a} vs {b}");
    }

    /// The vectors of the scipy computations: 300 reference values, 250 current ones.
    fn reference_values() -> Vec<f64> {
        (0..300).map(|i| f64::from((i * 37) % 101) / 10.0).collect()
    }

    fn current_values(shift: f64) -> Vec<f64> {
        (0..250)
            .map(|i| f64::from((i * 53) % 97) / 10.0 + shift)
            .collect()
    }

    fn numeric_reference(values: &[f64]) -> NumericReference {
        NumericReference::of(values.iter().copied(), values.len(), 1)
    }

    #[test]
    fn ks_matches_scipy_and_flags_a_shift_only() {
        let reference = numeric_reference(&reference_values());
        // scipy: D 0.15, kstwobign p 0.004325547894033351 (exact 0.0038465915857692212).
        let shifted = numeric(&reference, 300, &current_values(1.5)).unwrap();
        assert_eq!(shifted.test, DriftTest::Ks);
        close(shifted.statistic, 0.004_325_547_894_033_351, 1e-10);
        assert!(shifted.drifted);
        // D 0.046: kstwobign p 0.9351186400750535 (exact 0.921453274819607).
        let same = numeric(&reference, 300, &current_values(0.0)).unwrap();
        close(same.statistic, 0.935_118_640_075_053_5, 1e-10);
        assert!(!same.drifted);
    }

    #[test]
    fn distinct_values_are_counted_over_both_sides() {
        // Five values in training, a sixth live: a numeric test, not "a new category".
        let training: Vec<f64> = (0..300).map(|i| f64::from(i % 5)).collect();
        let reference = numeric_reference(&training);
        let live: Vec<f64> = (0..200).map(|i| f64::from(i % 6)).collect();
        assert_eq!(numeric(&reference, 300, &live).unwrap().test, DriftTest::Ks);
        // One value on both sides: nothing to compare, no drift.
        let constant = numeric_reference(&[1.0; 50]);
        let same = numeric(&constant, 50, &[1.0; 20]).unwrap();
        assert_eq!(same.test, DriftTest::ZTest);
        assert!(!same.drifted);
    }

    #[test]
    fn a_large_reference_uses_the_normed_wasserstein_distance() {
        let reference = numeric_reference(&reference_values());
        // scipy: wasserstein_distance 1.2614666666666665, np.std(reference) 2.916279517162616.
        let d = numeric(&reference, 50_000, &current_values(1.5)).unwrap();
        assert_eq!(d.test, DriftTest::Wasserstein);
        close(d.statistic, 0.432_560_273_884_173_5, 1e-12);
        assert!(d.drifted);
        let same = numeric(&reference, 50_000, &reference_values()).unwrap();
        close(same.statistic, 0.0, 1e-12);
        assert!(!same.drifted);
    }

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn categories_use_chi_squared_or_jensen_shannon_as_scipy_computes_them() {
        let reference = counts(&[("a", 50), ("b", 30), ("c", 20)]);
        // scipy.stats.chisquare([40, 45, 15], [50, 30, 20]): p 0.004630918733533247.
        let d = categorical(&reference, 100, &counts(&[("a", 40), ("b", 45), ("c", 15)])).unwrap();
        assert_eq!(d.test, DriftTest::ChiSquare);
        close(d.statistic, 0.004_630_918_733_533_247, 1e-12);
        assert!(d.drifted);
        // chisquare([49, 31, 20], ...): p 0.973685749353145.
        let same = categorical(&reference, 100, &counts(&[("a", 49), ("b", 31), ("c", 20)]));
        close(same.unwrap().statistic, 0.973_685_749_353_145, 1e-12);
        // A category training never saw.
        let new = categorical(&reference, 100, &counts(&[("a", 49), ("d", 1)])).unwrap();
        assert!(new.drifted && new.statistic == 0.0);
        // scipy.spatial.distance.jensenshannon([.5, .3, .2], [.4, .45, .15]) 0.11011892498610816.
        let js = categorical(
            &reference,
            5_000,
            &counts(&[("a", 40), ("b", 45), ("c", 15)]),
        );
        let js = js.unwrap();
        assert_eq!(js.test, DriftTest::JensenShannon);
        close(js.statistic, 0.110_118_924_986_108_16, 1e-12);
        assert!(js.drifted);
        // ([.5, .3, .2, 0], [.4, .3, .2, .1]) 0.19349646201204068.
        let unseen = categorical(
            &reference,
            5_000,
            &counts(&[("a", 4), ("b", 3), ("c", 2), ("d", 1)]),
        );
        close(unseen.unwrap().statistic, 0.193_496_462_012_040_68, 1e-12);
    }

    #[test]
    fn two_values_use_the_two_proportion_z_test() {
        // 30 of 1 000 against 30 of 500: z −2.7950849718747373, p 0.005188607552315565.
        let reference = counts(&[("0", 970), ("1", 30)]);
        let d = categorical(&reference, 1_000, &counts(&[("0", 470), ("1", 30)])).unwrap();
        assert_eq!(d.test, DriftTest::ZTest);
        close(d.statistic, 0.005_188_607_552_315_565, 1e-7);
        assert!(d.drifted);
        // A numeric column of 0/1 takes the same path through its sample.
        let flags: Vec<f64> = (0..1_000)
            .map(|i| f64::from(u8::from(i % 33 == 0)))
            .collect();
        let reference = numeric_reference(&flags);
        let same = numeric(&reference, 1_000, &flags[..500]).unwrap();
        assert_eq!(same.test, DriftTest::ZTest);
        assert!(!same.drifted);
    }

    #[test]
    fn other_categories_fold_into_the_reference_bucket_and_shares_count_drifted_columns() {
        let reference = counts(&[("a", 50), ("b", 30), (OTHER, 20)]);
        let d = categorical(
            &reference,
            100,
            &counts(&[("a", 50), ("b", 30), ("x", 12), ("y", 8)]),
        );
        let d = d.unwrap();
        assert!(!d.drifted, "x and y are compared as `{OTHER}`: {d:?}");
        assert_eq!(categorical(&reference, 100, &BTreeMap::new()), None);
        let yes = Drift::distance(DriftTest::JensenShannon, 0.3);
        let no = Drift::distance(DriftTest::JensenShannon, 0.01);
        assert_eq!(drift_share([&yes, &no, &no, &yes]), Some((0.5, 2)));
        assert_eq!(drift_share(std::iter::empty::<&Drift>()), None);
    }
}
