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
    confusion_of(
        scores.iter().copied().zip(labels.iter().copied()),
        threshold,
    )
}

fn confusion_of(pairs: impl Iterator<Item = (f64, bool)>, threshold: f64) -> Confusion {
    let mut c = Confusion::default();
    for (s, y) in pairs {
        match (s >= threshold, y) {
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

/// `(score, label)` pairs sorted by score, ascending: what the ranking metrics read. Sorting
/// the pairs themselves (not indexes into the scores) keeps the sort cache-friendly on
/// millions of rows; input that is sorted already, or made of sorted runs, sorts in linear time.
pub fn sorted_pairs(scores: &[f64], labels: &[bool]) -> Vec<(f64, bool)> {
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    sort_pairs(&mut pairs);
    pairs
}

/// Sorts `(score, label)` pairs by score, ascending (the labels of equal scores in any order:
/// every metric here treats a tie as one cut-off).
pub fn sort_pairs(pairs: &mut [(f64, bool)]) {
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// The runs of equal scores of sorted `pairs`, as `(positives, negatives)`, ascending.
fn ties(pairs: &[(f64, bool)]) -> impl Iterator<Item = (usize, usize)> + '_ {
    pairs
        .chunk_by(|a, b| a.0.total_cmp(&b.0).is_eq())
        .map(|run| {
            let pos = run.iter().filter(|(_, y)| *y).count();
            (pos, run.len() - pos)
        })
}

/// ROC AUC by ranks (Mann-Whitney), ties averaged; 0.5 when one class is absent.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    roc_auc_sorted(&sorted_pairs(scores, labels))
}

/// [`roc_auc`] of pairs sorted by [`sort_pairs`], in one pass.
pub fn roc_auc_sorted(pairs: &[(f64, bool)]) -> f64 {
    let (mut rank_sum, mut below, mut pos) = (0.0, 0usize, 0usize);
    for (p, n) in ties(pairs) {
        // Ranks below+1 ..= below+p+n share their average.
        let average = (2 * below + p + n + 1) as f64 / 2.0;
        rank_sum += average * p as f64;
        below += p + n;
        pos += p;
    }
    let pos = pos as f64;
    let neg = pairs.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Average precision: Σ (Rₖ − Rₖ₋₁) · Pₖ over distinct score cut-offs, highest first.
pub fn pr_auc(scores: &[f64], labels: &[bool]) -> f64 {
    pr_auc_sorted(&sorted_pairs(scores, labels))
}

/// [`pr_auc`] of pairs sorted by [`sort_pairs`], in one pass from the highest score.
pub fn pr_auc_sorted(pairs: &[(f64, bool)]) -> f64 {
    let pos = pairs.iter().filter(|(_, y)| *y).count();
    if pos == 0 {
        return 0.0;
    }
    let runs: Vec<(usize, usize)> = ties(pairs).collect();
    let (mut tp, mut fp, mut ap, mut last_recall) = (0usize, 0usize, 0.0, 0.0);
    for (p, n) in runs.into_iter().rev() {
        tp += p;
        fp += n;
        let recall = ratio(tp, pos);
        ap += (recall - last_recall) * ratio(tp, tp + fp);
        last_recall = recall;
    }
    ap
}

/// Mean binary cross-entropy.
pub fn log_loss(scores: &[f64], labels: &[bool]) -> f64 {
    log_loss_of(
        scores.iter().copied().zip(labels.iter().copied()),
        scores.len(),
    )
}

fn log_loss_of(pairs: impl Iterator<Item = (f64, bool)>, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let total: f64 = pairs
        .map(|(s, y)| {
            let p = s.clamp(1e-15, 1.0 - 1e-15);
            if y { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    total / n as f64
}

/// The threshold maximising F1 (ties: the higher threshold); 0.5 when there are no positives.
pub fn best_f1_threshold(scores: &[f64], labels: &[bool]) -> f64 {
    let pairs = sorted_pairs(scores, labels);
    let pos = pairs.iter().filter(|(_, y)| *y).count();
    if pos == 0 {
        return 0.5;
    }
    let (mut tp, mut fp, mut best, mut best_t) = (0usize, 0usize, -1.0, 0.5);
    for run in pairs.chunk_by(|a, b| a.0.total_cmp(&b.0).is_eq()).rev() {
        let p = run.iter().filter(|(_, y)| *y).count();
        tp += p;
        fp += run.len() - p;
        let f1 = 2.0 * tp as f64 / (2 * tp + fp + (pos - tp)) as f64;
        if f1 > best {
            (best, best_t) = (f1, run[0].0);
        }
    }
    best_t
}

/// Every metric at `threshold`.
pub fn evaluate(scores: &[f64], labels: &[bool], threshold: f64) -> Metrics {
    evaluate_sorted(&sorted_pairs(scores, labels), threshold)
}

/// [`evaluate`] of pairs sorted by [`sort_pairs`]: linear in their number.
pub fn evaluate_sorted(pairs: &[(f64, bool)], threshold: f64) -> Metrics {
    let c = confusion_of(pairs.iter().copied(), threshold);
    Metrics {
        rows: pairs.len(),
        positives: pairs.iter().filter(|(_, y)| *y).count(),
        roc_auc: roc_auc_sorted(pairs),
        pr_auc: pr_auc_sorted(pairs),
        log_loss: log_loss_of(pairs.iter().copied(), pairs.len()),
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
    fn the_one_pass_auc_equals_counting_every_pair_with_ties_half() {
        let n = 600;
        let scores: Vec<f64> = (0..n).map(|i| ((i * 37) % 50) as f64 / 50.0).collect();
        let labels: Vec<bool> = (0..n).map(|i| (i * 13) % 7 < 2).collect();
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (a, ya) in scores.iter().zip(&labels) {
            for (b, yb) in scores.iter().zip(&labels) {
                if *ya && !*yb {
                    pairs += 1.0;
                    wins += if a > b {
                        1.0
                    } else if a == b {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!((roc_auc(&scores, &labels) - wins / pairs).abs() < 1e-12);
        // Pairs made of sorted runs (as the monitor's buckets hand them over) sort the same.
        let mut runs = sorted_pairs(&scores[..300], &labels[..300]);
        runs.extend(sorted_pairs(&scores[300..], &labels[300..]));
        sort_pairs(&mut runs);
        assert_eq!(
            evaluate_sorted(&runs, 0.5).roc_auc,
            evaluate(&scores, &labels, 0.5).roc_auc
        );
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
