//! Training on a dataset built by `quiver dataset build`: the train split fits the encoding and
//! the estimator, the test split evaluates it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use quiver_features::Value;
use quiver_features::log::Column;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};
use smartcore::tree::decision_tree_classifier::DecisionTreeClassifierParameters;

use crate::baseline::Baseline;
use crate::metrics::{Metrics, best_f1_threshold, evaluate};
use crate::model::{Encoding, Estimator, Model, Tree};
use crate::{Error, Result};

/// Which estimator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// smartcore logistic regression.
    LogisticRegression,
    /// Bagged smartcore decision trees on random input subsets.
    RandomForest,
}

impl Kind {
    /// Parses `logistic_regression` / `random_forest`.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "logistic_regression" | "lr" => Ok(Self::LogisticRegression),
            "random_forest" | "rf" => Ok(Self::RandomForest),
            other => Err(Error::Invalid(format!(
                "unknown model `{other}`: use logistic_regression or random_forest"
            ))),
        }
    }

    /// Short tag used in model ids.
    pub fn tag(self) -> &'static str {
        match self {
            Self::LogisticRegression => "lr",
            Self::RandomForest => "rf",
        }
    }
}

/// Hyper-parameters (each estimator reads its own).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// L2 regularisation of the logistic regression.
    pub alpha: f64,
    /// Trees of the forest.
    pub trees: u16,
    /// Maximum tree depth.
    pub max_depth: u16,
    /// Minimum samples per leaf.
    pub min_samples_leaf: usize,
    /// Seed of bootstrap samples and input subsets.
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            alpha: 0.1,
            trees: 40,
            max_depth: 8,
            min_samples_leaf: 5,
            seed: 42,
        }
    }
}

/// A split in memory: feature columns, labels, times.
#[derive(Debug, Clone)]
pub struct Split {
    /// One column per feature of the manifest.
    pub columns: Vec<Vec<Value>>,
    /// Labels (true, or non-zero).
    pub labels: Vec<bool>,
}

impl Split {
    /// Rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Row `r` as a feature map.
    pub fn row(&self, features: &[String], r: usize) -> BTreeMap<String, Value> {
        features
            .iter()
            .zip(&self.columns)
            .map(|(f, c)| (f.clone(), c[r].clone()))
            .collect()
    }
}

/// A dataset directory.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `manifest.json` as written.
    pub manifest: serde_json::Value,
    /// Feature columns, in model order.
    pub features: Vec<String>,
    /// Train split.
    pub train: Split,
    /// Test split.
    pub test: Split,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { path, source }
}

fn read_split(path: &Path, features: &[String], label: &str) -> Result<Split> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut split = Split {
        columns: vec![Vec::new(); features.len()],
        labels: Vec::new(),
    };
    for batch in reader {
        let batch: RecordBatch = batch?;
        for (i, f) in features.iter().enumerate() {
            let col = batch
                .column_by_name(f)
                .ok_or_else(|| Error::Invalid(format!("{}: no column `{f}`", path.display())))?;
            let col = Column::new(col.as_ref());
            split.columns[i].extend((0..batch.num_rows()).map(|r| col.value(r)));
        }
        let col = batch
            .column_by_name(label)
            .ok_or_else(|| Error::Invalid(format!("{}: no label `{label}`", path.display())))?;
        let col = Column::new(col.as_ref());
        split
            .labels
            .extend((0..batch.num_rows()).map(|r| match col.value(r) {
                Value::Bool(b) => b,
                Value::Int(i) => i != 0,
                Value::Float(f) => f != 0.0,
                _ => false,
            }));
    }
    Ok(split)
}

/// Reads `manifest.json`, `train.parquet` and `test.parquet` of a dataset directory.
pub fn load_dataset(dir: &Path) -> Result<Dataset> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let manifest: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let features: Vec<String> = manifest["features"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let label = manifest["label_column"]
        .as_str()
        .ok_or_else(|| Error::Invalid(format!("{}: no label_column", path.display())))?
        .to_string();
    if features.is_empty() {
        return Err(Error::Invalid(format!("{}: no features", path.display())));
    }
    let train = read_split(&dir.join("train.parquet"), &features, &label)?;
    let test = read_split(&dir.join("test.parquet"), &features, &label)?;
    Ok(Dataset {
        manifest,
        features,
        train,
        test,
    })
}

fn matrix(rows: &[Vec<f64>]) -> Result<DenseMatrix<f64>> {
    DenseMatrix::from_2d_vec(&rows.to_vec()).map_err(|e| Error::Model(e.to_string()))
}

/// Fits an estimator on encoded rows.
fn fit(kind: Kind, params: &Params, rows: &[Vec<f64>], labels: &[bool]) -> Result<Estimator> {
    let y: Vec<u32> = labels.iter().map(|b| u32::from(*b)).collect();
    if !labels.iter().any(|b| *b) || labels.iter().all(|b| *b) {
        return Err(Error::Invalid(
            "the train split needs both positive and negative labels".into(),
        ));
    }
    if rows.first().is_none_or(Vec::is_empty) {
        return Err(Error::Invalid(
            "every feature is constant (or null) in the train split: nothing to learn from".into(),
        ));
    }
    match kind {
        Kind::LogisticRegression => {
            let x = matrix(rows)?;
            let lr = LogisticRegression::fit(
                &x,
                &y,
                LogisticRegressionParameters::default().with_alpha(params.alpha),
            )
            .map_err(|e| Error::Model(e.to_string()))?;
            let coefficients = lr.coefficients();
            let n = rows.first().map_or(0, Vec::len);
            let weights = (0..n)
                .map(|j| *smartcore::linalg::basic::arrays::Array::get(coefficients, (0, j)))
                .collect();
            let intercept = *smartcore::linalg::basic::arrays::Array::get(lr.intercept(), (0, 0));
            let weights: Vec<f64> = weights;
            if !intercept.is_finite() || weights.iter().any(|w| !w.is_finite()) {
                return Err(Error::Model(format!(
                    "logistic regression did not converge (alpha {}): weights {weights:?}, intercept {intercept}",
                    params.alpha
                )));
            }
            Ok(Estimator::LogisticRegression { weights, intercept })
        }
        Kind::RandomForest => {
            let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
            let n_inputs = rows.first().map_or(0, Vec::len);
            let per_tree = ((n_inputs as f64).sqrt().ceil() as usize).clamp(1, n_inputs.max(1));
            let mut trees = Vec::with_capacity(params.trees as usize);
            for _ in 0..params.trees {
                // Inputs: a random subset of √d; rows: a bootstrap sample with both classes.
                let mut inputs: Vec<usize> = (0..n_inputs).collect();
                for i in 0..per_tree.min(n_inputs) {
                    let j = rng.random_range(i..n_inputs);
                    inputs.swap(i, j);
                }
                inputs.truncate(per_tree);
                inputs.sort_unstable();
                let (sample_x, sample_y) = loop {
                    let picks: Vec<usize> = (0..rows.len())
                        .map(|_| rng.random_range(0..rows.len()))
                        .collect();
                    let ys: Vec<u32> = picks.iter().map(|&i| y[i]).collect();
                    if ys.contains(&0) && ys.contains(&1) {
                        let xs: Vec<Vec<f64>> = picks
                            .iter()
                            .map(|&i| inputs.iter().map(|&c| rows[i][c]).collect())
                            .collect();
                        break (xs, ys);
                    }
                };
                let tree: Tree = Tree::fit(
                    &matrix(&sample_x)?,
                    &sample_y,
                    DecisionTreeClassifierParameters::default()
                        .with_max_depth(params.max_depth)
                        .with_min_samples_leaf(params.min_samples_leaf),
                )
                .map_err(|e| Error::Model(e.to_string()))?;
                trees.push((inputs, tree));
            }
            Ok(Estimator::RandomForest { trees })
        }
    }
}

/// A trained, evaluated candidate (not yet registered).
#[derive(Debug)]
pub struct Trained {
    /// The model.
    pub model: Model,
    /// Its kind.
    pub kind: Kind,
    /// Its hyper-parameters.
    pub params: Params,
    /// Metrics on the train split.
    pub train: Metrics,
    /// Metrics on the test split.
    pub test: Metrics,
    /// Training wall time (seconds).
    pub seconds: f64,
    /// What monitoring compares live inputs and scores with.
    pub baseline: Baseline,
}

/// Scores every row of a split.
pub fn score_split(model: &Model, features: &[String], split: &Split) -> Result<Vec<f64>> {
    (0..split.len())
        .map(|r| model.score(&split.row(features, r)))
        .collect()
}

/// Trains one candidate and evaluates it.
pub fn train(dataset: &Dataset, kind: Kind, params: Params, id: String) -> Result<Trained> {
    let started = Instant::now();
    let encoding = Encoding::fit(&dataset.features, &dataset.train.columns);
    let rows: Vec<Vec<f64>> = (0..dataset.train.len())
        .map(|r| encoding.row(&dataset.train.row(&dataset.features, r)))
        .collect::<Result<_>>()?;
    let estimator = fit(kind, &params, &rows, &dataset.train.labels)?;
    let train_scores: Vec<f64> = rows
        .iter()
        .map(|r| estimator.score(r))
        .collect::<Result<_>>()?;
    let threshold = best_f1_threshold(&train_scores, &dataset.train.labels);
    let model = Model {
        id,
        features: dataset.features.clone(),
        encoding,
        estimator,
        threshold,
    };
    let seconds = started.elapsed().as_secs_f64();
    let test_scores = score_split(&model, &dataset.features, &dataset.test)?;
    // Inputs as the model was fitted on them; scores out of sample (a forest is overconfident
    // on its own training rows, which would bias score drift and the estimated performance).
    let baseline = Baseline::of(
        &dataset.features,
        &dataset.train.columns,
        &test_scores,
        params.seed,
    );
    Ok(Trained {
        train: evaluate(&train_scores, &dataset.train.labels, threshold),
        test: evaluate(&test_scores, &dataset.test.labels, threshold),
        model,
        kind,
        params,
        seconds,
        baseline,
    })
}

/// The small grid `--grid` tries around `base`.
pub fn grid(kind: Kind, base: Params) -> Vec<Params> {
    match kind {
        Kind::LogisticRegression => [0.01, 0.1, 1.0, 10.0]
            .iter()
            .map(|&alpha| Params { alpha, ..base })
            .collect(),
        Kind::RandomForest => [(4, 20), (8, 40), (12, 40)]
            .iter()
            .map(|&(max_depth, trees)| Params {
                max_depth,
                trees,
                ..base
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_estimators_learn_a_separable_signal_and_are_reproducible() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut columns = vec![Vec::new(), Vec::new()];
        let mut labels = Vec::new();
        for _ in 0..2_000 {
            let y = rng.random_bool(0.1);
            let x: f64 = rng.random_range(0.0..1.0) + if y { 1.5 } else { 0.0 };
            columns[0].push(Value::Float(x * 100.0));
            columns[1].push(Value::Str(if y { "XX".into() } else { "FR".into() }));
            labels.push(y);
        }
        let split = Split { columns, labels };
        let dataset = Dataset {
            manifest: serde_json::Value::Null,
            features: vec!["v__amount".into(), "v__country".into()],
            train: split.clone(),
            test: split,
        };
        for kind in [Kind::LogisticRegression, Kind::RandomForest] {
            let a = train(
                &dataset,
                kind,
                Params {
                    trees: 5,
                    ..Params::default()
                },
                "a".into(),
            )
            .unwrap();
            let b = train(
                &dataset,
                kind,
                Params {
                    trees: 5,
                    ..Params::default()
                },
                "b".into(),
            )
            .unwrap();
            assert!(a.test.roc_auc > 0.95, "{kind:?}: {:?}", a.test);
            assert_eq!(a.test, b.test, "{kind:?} is reproducible");
        }
    }
}
