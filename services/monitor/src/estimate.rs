//! Performance estimated before labels arrive (confidence-based performance estimation, as
//! NannyML's CBPE): read as calibrated probabilities, the scores of a window say how many of
//! its events are positive and, at every threshold, how many of those rank above it — so the
//! ROC curve, and its area, can be expected without a single label.

/// The ROC AUC a window of calibrated `scores` is expected to have once its labels arrive
/// (`None` when the scores expect no positive or no negative).
pub fn estimated_roc_auc(scores: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = scores
        .iter()
        .copied()
        .filter(|s| s.is_finite())
        .map(|s| s.clamp(0.0, 1.0))
        .collect();
    // Ascending (a window's scores usually arrive sorted already: the report sorts them once
    // for every statistic), walked from the top.
    sorted.sort_by(f64::total_cmp);
    sorted.reverse();
    let positives: f64 = sorted.iter().sum();
    let negatives = sorted.len() as f64 - positives;
    if positives <= 0.0 || negatives <= 0.0 {
        return None;
    }
    // Walk the thresholds from the top: each group of equal scores moves the expected
    // (FPR, TPR) point; the area is summed by trapezoids.
    let (mut tp, mut fp, mut area) = (0.0, 0.0, 0.0);
    let mut i = 0;
    while i < sorted.len() {
        let s = sorted[i];
        let (mut dtp, mut dfp) = (0.0, 0.0);
        while i < sorted.len() && sorted[i] == s {
            dtp += sorted[i];
            dfp += 1.0 - sorted[i];
            i += 1;
        }
        area += (dfp / negatives) * (tp + dtp / 2.0) / positives;
        tp += dtp;
        fp += dfp;
    }
    debug_assert!((fp - negatives).abs() < 1e-6 * negatives.max(1.0));
    Some(area)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_models::metrics::roc_auc;

    /// A tiny deterministic generator, so the test needs no dependency.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn calibrated_scores_estimate_the_auc_their_labels_give() {
        // Scores that are the true probabilities: labels drawn from them.
        let mut rng = Lcg(7);
        let scores: Vec<f64> = (0..20_000).map(|_| rng.next().powi(3)).collect();
        let labels: Vec<bool> = scores.iter().map(|s| rng.next() < *s).collect();
        let realised = roc_auc(&scores, &labels);
        let estimated = estimated_roc_auc(&scores).unwrap();
        assert!(
            (estimated - realised).abs() < 0.01,
            "{estimated} vs {realised}"
        );
    }

    #[test]
    fn certain_scores_estimate_a_perfect_ranking_and_one_class_none() {
        let perfect = estimated_roc_auc(&[1.0, 1.0, 0.0, 0.0, 0.0]).unwrap();
        assert!((perfect - 1.0).abs() < 1e-12);
        let coin = estimated_roc_auc(&[0.5; 10]).unwrap();
        assert!((coin - 0.5).abs() < 1e-12, "ties are a coin");
        assert_eq!(estimated_roc_auc(&[0.0, 0.0]), None);
        assert_eq!(estimated_roc_auc(&[]), None);
    }
}
