//! Binary-classification metrics over scores in [0, 1] (pure).

use serde::{Deserialize, Serialize};

/// Evaluation of a model on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows scored.
    pub rows: usize,
    /// Positive rows.
    pub positives: usize,
    /// Area under the ROC curve (ties count half).
    pub roc_auc: f64,
    /// Area under the precision-recall curve (average precision).
    pub pr_auc: f64,
    /// Mean binary cross-entropy (scores clipped to [1e-15, 1 - 1e-15]).
    pub log_loss: f64,
    /// The decision threshold (score ≥ threshold → positive).
    pub threshold: f64,
    /// Precision at the threshold.
    pub precision: f64,
    /// Recall at the threshold.
    pub recall: f64,
    /// Confusion matrix at the threshold.
    pub confusion: Confusion,
}

/// Counts at a threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// True positives.
    pub tp: usize,
    /// False positives.
    pub fp: usize,
    /// True negatives.
    pub tn: usize,
    /// False negatives.
    pub fn_: usize,
}

/// The confusion matrix at `threshold`.
pub fn confusion(scores: &[f64], labels: &[bool], threshold: f64) -> Confusion {
    let mut c = Confusion::default();
    for (s, y) in scores.iter().zip(labels) {
        match (*s >= threshold, *y) {
            (true, true) => c.tp += 1,
            (true, false) => c.fp += 1,
            (false, false) => c.tn += 1,
            (false, true) => c.fn_ += 1,
        }
    }
    c
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// ROC AUC by ranks (Mann-Whitney), ties averaged; 0.5 when one class is absent.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]].total_cmp(&scores[idx[i]]).is_eq() {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their average.
        let average = (i + j + 2) as f64 / 2.0;
        rank_sum += average * idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let pos = labels.iter().filter(|y| **y).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Average precision: Σ (Rₖ − Rₖ₋₁) · Pₖ over distinct score cut-offs, highest first.
pub fn pr_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let pos = labels.iter().filter(|y| **y).count();
    if pos == 0 {
        return 0.0;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut ap, mut last_recall, mut i) = (0usize, 0usize, 0.0, 0.0, 0);
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]].total_cmp(&scores[idx[i]]).is_eq() {
            if labels[idx[j]] {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        let recall = ratio(tp, pos);
        ap += (recall - last_recall) * ratio(tp, tp + fp);
        last_recall = recall;
        i = j;
    }
    ap
}

/// Mean binary cross-entropy.
pub fn log_loss(scores: &[f64], labels: &[bool]) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    let total: f64 = scores
        .iter()
        .zip(labels)
        .map(|(s, y)| {
            let p = s.clamp(1e-15, 1.0 - 1e-15);
            if *y { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    total / scores.len() as f64
}

/// The threshold maximising F1 (ties: the higher threshold); 0.5 when there are no positives.
pub fn best_f1_threshold(scores: &[f64], labels: &[bool]) -> f64 {
    let pos = labels.iter().filter(|y| **y).count();
    if pos == 0 {
        return 0.5;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut best, mut best_t, mut i) = (0usize, 0usize, -1.0, 0.5, 0);
    while i < idx.len() {
        let t = scores[idx[i]];
        while i < idx.len() && scores[idx[i]].total_cmp(&t).is_eq() {
            if labels[idx[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let f1 = 2.0 * tp as f64 / (2 * tp + fp + (pos - tp)) as f64;
        if f1 > best {
            (best, best_t) = (f1, t);
        }
    }
    best_t
}

/// Every metric at `threshold`.
pub fn evaluate(scores: &[f64], labels: &[bool], threshold: f64) -> Metrics {
    let c = confusion(scores, labels, threshold);
    Metrics {
        rows: scores.len(),
        positives: labels.iter().filter(|y| **y).count(),
        roc_auc: roc_auc(scores, labels),
        pr_auc: pr_auc(scores, labels),
        log_loss: log_loss(scores, labels),
        threshold,
        precision: ratio(c.tp, c.tp + c.fp),
        recall: ratio(c.tp, c.tp + c.fn_),
        confusion: c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_random_and_inverted_rankings() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels), 0.0);
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &labels), 0.5);
        // One inversion out of four pairs.
        assert_eq!(roc_auc(&[0.1, 0.6, 0.5, 0.9], &labels), 0.75);
    }

    #[test]
    fn average_precision_and_threshold_choice() {
        let labels = [true, false, true, false];
        // Ranked: T(0.9) F(0.8) T(0.7) F(0.1): AP = 0.5·1 + 0.5·(2/3).
        let scores = [0.9, 0.8, 0.7, 0.1];
        assert!((pr_auc(&scores, &labels) - (0.5 + 1.0 / 3.0)).abs() < 1e-12);
        assert_eq!(best_f1_threshold(&scores, &labels), 0.7);
        let m = evaluate(&scores, &labels, 0.7);
        assert_eq!(
            m.confusion,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 1,
                fn_: 0
            }
        );
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.recall, 1.0);
        assert!((log_loss(&[1.0, 0.0], &[true, false])).abs() < 1e-12);
    }
}
