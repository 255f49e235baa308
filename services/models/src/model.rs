//! A trained model: how feature values become a numeric row (the encoding, fitted on the train
//! split) and the estimator that turns the row into a score in [0, 1].

use std::collections::BTreeMap;

use quiver_features::Value;
use serde::{Deserialize, Serialize};
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::tree::decision_tree_classifier::DecisionTreeClassifier;

use crate::{Error, Result};

/// One numeric input of the estimator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Input {
    /// A numeric feature as is (null → the train mean, i.e. 0 after scaling).
    Numeric {
        /// Feature column (`<view>__<feature>`).
        feature: String,
    },
    /// 1 when a string/bool feature has this value.
    OneHot {
        /// Feature column.
        feature: String,
        /// The value.
        value: String,
    },
}

/// Inputs and their standardisation (fitted on the train split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Encoding {
    /// Inputs in estimator order.
    pub inputs: Vec<Input>,
    /// Mean of each input on the train split.
    pub mean: Vec<f64>,
    /// Standard deviation of each input (1 when constant).
    pub scale: Vec<f64>,
}

/// The most one-hot columns a string feature gets (its most frequent values).
pub const MAX_CATEGORIES: usize = 16;

fn raw(input: &Input, value: &Value) -> Option<f64> {
    match input {
        Input::Numeric { .. } => value.as_f64().or(match value {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }),
        Input::OneHot { value: want, .. } => Some(f64::from(u8::from(match value {
            Value::Str(s) => s == want,
            Value::Bool(b) => &b.to_string() == want,
            _ => false,
        }))),
    }
}

impl Encoding {
    /// Fits inputs and scaling on feature columns (`columns[i]` holds feature `features[i]`).
    pub fn fit(features: &[String], columns: &[Vec<Value>]) -> Self {
        let mut inputs = Vec::new();
        for (name, column) in features.iter().zip(columns) {
            let numeric = column
                .iter()
                .all(|v| matches!(v, Value::Int(_) | Value::Float(_) | Value::Null));
            if numeric {
                inputs.push(Input::Numeric {
                    feature: name.clone(),
                });
                continue;
            }
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for v in column {
                match v {
                    Value::Str(s) => *counts.entry(s.clone()).or_default() += 1,
                    Value::Bool(b) => *counts.entry(b.to_string()).or_default() += 1,
                    _ => {}
                }
            }
            let mut by_count: Vec<(String, usize)> = counts.into_iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            for (value, _) in by_count.into_iter().take(MAX_CATEGORIES) {
                inputs.push(Input::OneHot {
                    feature: name.clone(),
                    value,
                });
            }
        }
        let index: BTreeMap<&str, usize> = features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();
        let mut mean = Vec::with_capacity(inputs.len());
        let mut scale = Vec::with_capacity(inputs.len());
        let mut kept = Vec::with_capacity(inputs.len());
        for input in inputs {
            let feature = match &input {
                Input::Numeric { feature } | Input::OneHot { feature, .. } => feature,
            };
            let column = &columns[index[feature.as_str()]];
            let xs: Vec<f64> = column
                .iter()
                .filter_map(|v| raw(&input, v))
                .filter(|x| x.is_finite())
                .collect();
            let n = xs.len().max(1) as f64;
            let m = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
            // A constant input carries no signal (and stalls smartcore's solver): left out.
            if var > 0.0 {
                mean.push(m);
                scale.push(var.sqrt());
                kept.push(input);
            }
        }
        let inputs = kept;
        Self {
            inputs,
            mean,
            scale,
        }
    }

    /// The standardised row of one feature vector (null features → 0, the train mean). A
    /// feature the vector lacks rejects it: the model was trained on other views.
    pub fn row<F: FeatureLookup + ?Sized>(&self, features: &F) -> Result<Vec<f64>> {
        self.inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let feature = match input {
                    Input::Numeric { feature } | Input::OneHot { feature, .. } => feature,
                };
                let value = features.feature(feature).ok_or_else(|| Error::Rejected {
                    reason: Rejection::VectorRejected,
                    detail: format!("the vector has no feature `{feature}`"),
                })?;
                Ok(match raw(input, value) {
                    Some(x) if x.is_finite() => (x - self.mean[i]) / self.scale[i],
                    _ => 0.0,
                })
            })
            .collect()
    }
}

/// Where a model reads an event's features from, by column name (`<view>__<feature>`).
pub trait FeatureLookup {
    /// The value of a feature, or `None` if the vector has no such feature.
    fn feature(&self, name: &str) -> Option<&Value>;
}

impl FeatureLookup for BTreeMap<String, Value> {
    fn feature(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// Why an event could not be scored (the dead-letter reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The model produced NaN or an infinity.
    ScoreNotFinite,
    /// The vector lacks a feature the model reads, or the estimator refused it.
    VectorRejected,
    /// The deployed model cannot be loaded.
    ModelUnavailable,
}

impl Rejection {
    /// The stable code (dead-letter header `quiver.reason`).
    pub fn code(self) -> &'static str {
        match self {
            Rejection::ScoreNotFinite => "score_not_finite",
            Rejection::VectorRejected => "vector_rejected",
            Rejection::ModelUnavailable => "model_unavailable",
        }
    }
}

/// A smartcore decision tree.
pub type Tree = DecisionTreeClassifier<f64, u32, DenseMatrix<f64>, Vec<u32>>;

/// The fitted estimator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Estimator {
    /// Logistic regression (smartcore), kept as its coefficients: σ(w·x + b).
    LogisticRegression {
        /// One weight per input.
        weights: Vec<f64>,
        /// Intercept.
        intercept: f64,
    },
    /// A random forest: smartcore decision trees, each on a bootstrap sample and a random subset
    /// of the inputs; the score is the mean of the trees' positive-class probabilities.
    RandomForest {
        /// (inputs the tree reads, the tree).
        trees: Vec<(Vec<usize>, Tree)>,
    },
}

impl Estimator {
    /// The positive-class probability of a standardised row.
    pub fn score(&self, row: &[f64]) -> Result<f64> {
        match self {
            Estimator::LogisticRegression { weights, intercept } => {
                let z: f64 = weights.iter().zip(row).map(|(w, x)| w * x).sum::<f64>() + intercept;
                Ok(1.0 / (1.0 + (-z).exp()))
            }
            Estimator::RandomForest { trees } => {
                if trees.is_empty() {
                    return Ok(0.0);
                }
                let mut total = 0.0;
                for (inputs, tree) in trees {
                    let sub: Vec<f64> = inputs
                        .iter()
                        .map(|&i| row.get(i).copied().unwrap_or(0.0))
                        .collect();
                    let x = DenseMatrix::from_2d_vec(&vec![sub])
                        .map_err(|e| Error::Model(e.to_string()))?;
                    let p = tree
                        .predict_proba(&x)
                        .map_err(|e| Error::Model(e.to_string()))?;
                    // Classes are sorted: 0 then 1; every tree is fitted on both.
                    total += if p.shape().1 > 1 { *p.get((0, 1)) } else { 0.0 };
                }
                Ok(total / trees.len() as f64)
            }
        }
    }
}

/// A model ready to score: id, encoding, estimator and decision threshold.
#[derive(Debug, Serialize, Deserialize)]
pub struct Model {
    /// Registry id.
    pub id: String,
    /// Feature columns it reads (`<view>__<feature>`), in dataset order.
    pub features: Vec<String>,
    /// Encoding of those features.
    pub encoding: Encoding,
    /// The estimator.
    pub estimator: Estimator,
    /// Decision threshold on the score.
    pub threshold: f64,
}

impl Model {
    /// Score of one feature vector (`<view>__<feature>` → value). A vector it cannot score is
    /// [`Error::Rejected`].
    pub fn score<F: FeatureLookup + ?Sized>(&self, features: &F) -> Result<f64> {
        let row = self.encoding.row(features)?;
        let score = self.estimator.score(&row).map_err(|e| Error::Rejected {
            reason: Rejection::VectorRejected,
            detail: format!("model {}: {e}", self.id),
        })?;
        if score.is_finite() {
            Ok(score)
        } else {
            Err(Error::Rejected {
                reason: Rejection::ScoreNotFinite,
                detail: format!("model {} produced the score {score}", self.id),
            })
        }
    }

    /// Whether a score is a positive decision.
    pub fn decide(&self, score: f64) -> bool {
        score >= self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_scales_numbers_and_one_hots_strings() {
        let features = vec!["v__amount".to_string(), "v__country".to_string()];
        let columns = vec![
            vec![Value::Float(1.0), Value::Float(3.0), Value::Null],
            vec![
                Value::Str("FR".into()),
                Value::Str("DE".into()),
                Value::Str("FR".into()),
            ],
        ];
        let e = Encoding::fit(&features, &columns);
        assert_eq!(e.inputs.len(), 3);
        assert_eq!(e.mean[0], 2.0);
        let row = e
            .row(&BTreeMap::from([
                ("v__amount".to_string(), Value::Float(3.0)),
                ("v__country".to_string(), Value::Str("DE".into())),
            ]))
            .unwrap();
        assert_eq!(row[0], 1.0);
        // FR is the most frequent value, so it comes first.
        assert!(matches!(&e.inputs[1], Input::OneHot { value, .. } if value == "FR"));
        assert!(row[1] < 0.0 && row[2] > 0.0);
        // A null number is the train mean; a vector without the features is rejected.
        let nulls = BTreeMap::from([
            ("v__amount".to_string(), Value::Null),
            ("v__country".to_string(), Value::Null),
        ]);
        assert_eq!(e.row(&nulls).unwrap()[0], 0.0);
        assert!(matches!(
            e.row(&BTreeMap::new()),
            Err(Error::Rejected {
                reason: Rejection::VectorRejected,
                ..
            })
        ));
    }

    #[test]
    fn logistic_scores_are_probabilities() {
        let est = Estimator::LogisticRegression {
            weights: vec![2.0],
            intercept: 0.0,
        };
        assert_eq!(est.score(&[0.0]).unwrap(), 0.5);
        assert!(est.score(&[5.0]).unwrap() > 0.99);
    }
}
