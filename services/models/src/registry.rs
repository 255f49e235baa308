//! The model registry: a directory under the store dir, one folder per model id
//! (`model.json`: what the scorer loads; `card.json`: how it was made and how it scored;
//! `baseline.json`: the training split's reference for monitoring), and
//! `registry.json`: which model is production, canary (with its traffic fraction) and shadow,
//! plus the production history that `rollback` walks back. Every file is written to a
//! temporary name and renamed, so a reader never sees half a file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::baseline::Baseline;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::train::{Kind, Params, Trained};
use crate::{Error, Result};

/// How a model was made and how it scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    /// Id.
    pub id: String,
    /// Estimator.
    pub kind: Kind,
    /// Hyper-parameters.
    pub params: Params,
    /// Feature columns, in model order.
    pub features: Vec<String>,
    /// The training set's manifest.
    pub dataset: serde_json::Value,
    /// Where the training set was.
    pub dataset_dir: String,
    /// Train metrics.
    pub train: Metrics,
    /// Test metrics.
    pub test: Metrics,
    /// When training finished (RFC 3339).
    pub trained_at: String,
    /// Training duration (seconds).
    pub train_seconds: f64,
    /// Why it was trained, when a policy trained it (empty when a user did).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A canary: a candidate taking a fraction of the decisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// Model id.
    pub id: String,
    /// Fraction of events (by event id hash) it decides.
    pub fraction: f64,
}

/// `registry.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// The production model.
    pub production: Option<String>,
    /// Earlier production models, most recent last.
    pub history: Vec<String>,
    /// Canary, if any.
    pub canary: Option<Canary>,
    /// Shadow model, if any (scored, never deciding).
    pub shadow: Option<String>,
    /// When it last changed (RFC 3339).
    pub updated_at: Option<String>,
    /// Every change, oldest first (registries written before it was kept start empty).
    #[serde(default)]
    pub timeline: Vec<Change>,
}

/// One deployment change, as the registry history and the monitor show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// When (RFC 3339).
    pub at: String,
    /// `retrained`, `promoted`, `rolled_back`, `canary`, `canary_removed`, `shadow`,
    /// `shadow_removed`.
    pub action: String,
    /// The model the change is about.
    pub model_id: String,
    /// Why, when a policy made the change (empty when a user did).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Deployment {
    /// When `model_id` entered the slot it holds now (`production`, `canary` or `shadow`), as
    /// the timeline recorded it: the latest change that put it there.
    pub fn deployed_at(&self, model_id: &str, variant: &str) -> Option<&str> {
        let action = match variant {
            "production" => ["promoted", "rolled_back"].as_slice(),
            "canary" => ["canary"].as_slice(),
            "shadow" => ["shadow"].as_slice(),
            _ => return None,
        };
        self.latest_change(model_id, action).map(|c| c.at.as_str())
    }

    /// The latest change of `model_id` that is one of `actions`.
    fn latest_change(&self, model_id: &str, actions: &[&str]) -> Option<&Change> {
        self.timeline
            .iter()
            .rev()
            .find(|c| c.model_id == model_id && actions.contains(&c.action.as_str()))
    }

    /// The canary, if a policy put it there (its latest `canary` change has a reason): its id,
    /// when (RFC 3339) and why — for a restarted monitor to go on judging it. A canary a user
    /// set is theirs to end.
    pub fn policy_canary(&self) -> Option<(&str, &str, &str)> {
        let canary = self.canary.as_ref()?;
        self.latest_change(&canary.id, &["canary"])
            .filter(|c| !c.reason.is_empty())
            .map(|c| (c.model_id.as_str(), c.at.as_str(), c.reason.as_str()))
    }

    /// The deployed models with their slots: production, canary, shadow.
    pub fn slots(&self) -> impl Iterator<Item = (&str, &'static str)> {
        [
            (self.production.as_deref(), "production"),
            (self.canary.as_ref().map(|c| c.id.as_str()), "canary"),
            (self.shadow.as_deref(), "shadow"),
        ]
        .into_iter()
        .filter_map(|(model, slot)| model.map(|m| (m, slot)))
    }

    fn record(&mut self, action: &str, model_id: &str, reason: &str) {
        self.timeline.push(Change {
            at: chrono::Utc::now().to_rfc3339(),
            action: action.to_string(),
            model_id: model_id.to_string(),
            reason: reason.to_string(),
        });
    }
}

/// The registry rooted at `<store>/models`.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { path, source }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The registry's directory under the store dir.
const DIR: &str = "models";
/// The deployment file in it.
const DEPLOYMENT: &str = "registry.json";

/// The deployment in `path` (none yet when it does not exist).
fn read_deployment_at(path: &Path) -> Result<Deployment> {
    if !path.exists() {
        return Ok(Deployment::default());
    }
    read_json(path)
}

/// The file holding a model's training baseline, beside `model.json` and `card.json`.
const BASELINE: &str = "baseline.json";

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::Model(e.to_string()))
}

impl Registry {
    /// Opens (creating) the registry under the store dir.
    pub fn open(store_dir: &Path) -> Result<Self> {
        let root = store_dir.join(DIR);
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(Self { root })
    }

    /// Path of `registry.json` (the scorer watches it).
    pub fn deployment_path(&self) -> PathBuf {
        self.root.join(DEPLOYMENT)
    }

    /// A fresh model id: `<kind>-<UTC time>-<seed>`.
    pub fn new_id(&self, kind: Kind, seed: u64) -> String {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%3f");
        format!("{}-{stamp}-s{seed}", kind.tag())
    }

    /// Stores a trained candidate; returns its card. A `reason` (a policy retrained it) goes in
    /// the card and, as `retrained`, in the timeline.
    pub fn register(
        &self,
        trained: &Trained,
        dataset: &serde_json::Value,
        dir: &Path,
        reason: &str,
    ) -> Result<ModelCard> {
        let id = &trained.model.id;
        let folder = self.root.join(id);
        std::fs::create_dir_all(&folder).map_err(io(&folder))?;
        let card = ModelCard {
            id: id.clone(),
            kind: trained.kind,
            params: trained.params,
            features: trained.model.features.clone(),
            dataset: dataset.clone(),
            dataset_dir: dir.display().to_string(),
            train: trained.train.clone(),
            test: trained.test.clone(),
            trained_at: chrono::Utc::now().to_rfc3339(),
            train_seconds: trained.seconds,
            reason: reason.to_string(),
        };
        write_atomic(&folder.join("model.json"), &to_json(&trained.model)?)?;
        write_atomic(&folder.join(BASELINE), &to_json(&trained.baseline)?)?;
        write_atomic(&folder.join("card.json"), &to_json(&card)?)?;
        if !reason.is_empty() {
            let mut d = self.deployment()?;
            d.record("retrained", id, reason);
            self.save(d)?;
        }
        Ok(card)
    }

    /// Trains a default logistic regression on the dataset in `dir`, registers it and makes it
    /// production (the first model of `quiver up` and the latency benchmark). Returns its card.
    pub fn train_and_promote(&self, dir: &Path) -> Result<ModelCard> {
        let dataset = crate::train::load_dataset(dir)?;
        let kind = Kind::LogisticRegression;
        let params = Params::default();
        let trained = crate::train::train(&dataset, kind, params, self.new_id(kind, params.seed))?;
        let card = self.register(&trained, &dataset.manifest, dir, "")?;
        self.promote(&card.id)?;
        Ok(card)
    }

    /// Loads a model.
    pub fn model(&self, id: &str) -> Result<Model> {
        let path = self.root.join(id).join("model.json");
        if !path.exists() {
            return Err(Error::Invalid(format!("no model `{id}` in the registry")));
        }
        read_json(&path)
    }

    /// Loads a card.
    pub fn card(&self, id: &str) -> Result<ModelCard> {
        let path = self.root.join(id).join("card.json");
        if !path.exists() {
            return Err(Error::Invalid(format!("no model `{id}` in the registry")));
        }
        read_json(&path)
    }

    /// A model's training baseline (`None` for a model registered before baselines were kept).
    pub fn baseline(&self, id: &str) -> Result<Option<Baseline>> {
        let path = self.root.join(id).join(BASELINE);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Every card, oldest first.
    pub fn cards(&self) -> Result<Vec<ModelCard>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let path = entry.map_err(io(&self.root))?.path().join("card.json");
            if path.exists() {
                out.push(read_json::<ModelCard>(&path)?);
            }
        }
        out.sort_by(|a, b| a.trained_at.cmp(&b.trained_at));
        Ok(out)
    }

    /// The deployment of the registry under `store_dir`, read without creating anything (for
    /// readers that must not write).
    pub fn read_deployment(store_dir: &Path) -> Result<Deployment> {
        read_deployment_at(&store_dir.join(DIR).join(DEPLOYMENT))
    }

    /// The current deployment.
    pub fn deployment(&self) -> Result<Deployment> {
        read_deployment_at(&self.deployment_path())
    }

    fn save(&self, mut d: Deployment) -> Result<Deployment> {
        d.updated_at = Some(chrono::Utc::now().to_rfc3339());
        write_atomic(&self.deployment_path(), &to_json(&d)?)?;
        Ok(d)
    }

    /// Makes `id` production (the previous one goes to the history).
    pub fn promote(&self, id: &str) -> Result<Deployment> {
        self.promote_because(id, "")
    }

    /// [`Registry::promote`], with the reason recorded in the timeline.
    pub fn promote_because(&self, id: &str, reason: &str) -> Result<Deployment> {
        self.card(id)?;
        let mut d = self.deployment()?;
        if d.production.as_deref() == Some(id) {
            return Ok(d);
        }
        if let Some(previous) = d.production.take() {
            d.history.push(previous);
        }
        d.production = Some(id.to_string());
        if d.canary.as_ref().is_some_and(|c| c.id == id) {
            d.canary = None;
        }
        d.record("promoted", id, reason);
        self.save(d)
    }

    /// Puts the previous production model back.
    pub fn rollback(&self) -> Result<Deployment> {
        let mut d = self.deployment()?;
        let previous = d
            .history
            .pop()
            .ok_or_else(|| Error::Invalid("no earlier production model to roll back to".into()))?;
        d.record("rolled_back", &previous, "");
        d.production = Some(previous);
        self.save(d)
    }

    /// Sets (or clears, with `None`) the canary.
    pub fn set_canary(&self, canary: Option<Canary>) -> Result<Deployment> {
        self.set_canary_because(canary, "")
    }

    /// [`Registry::set_canary`], with the reason recorded in the timeline.
    pub fn set_canary_because(&self, canary: Option<Canary>, reason: &str) -> Result<Deployment> {
        if let Some(c) = &canary {
            self.card(&c.id)?;
            if !(0.0..=1.0).contains(&c.fraction) {
                return Err(Error::Invalid(format!(
                    "canary fraction must be in [0, 1]: got {}",
                    c.fraction
                )));
            }
        }
        let mut d = self.deployment()?;
        match (&canary, &d.canary) {
            (Some(new), _) => d.record("canary", &new.id, reason),
            (None, Some(old)) => d.record("canary_removed", &old.id.clone(), reason),
            (None, None) => {}
        }
        d.canary = canary;
        self.save(d)
    }

    /// Sets (or clears) the shadow model.
    pub fn set_shadow(&self, id: Option<String>) -> Result<Deployment> {
        if let Some(id) = &id {
            self.card(id)?;
        }
        let mut d = self.deployment()?;
        match (&id, &d.shadow) {
            (Some(new), _) => d.record("shadow", new, ""),
            (None, Some(old)) => d.record("shadow_removed", &old.clone(), ""),
            (None, None) => {}
        }
        d.shadow = id;
        self.save(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(at: &str, action: &str, model_id: &str) -> Change {
        Change {
            at: at.into(),
            action: action.into(),
            model_id: model_id.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn a_model_is_deployed_since_the_last_change_that_put_it_in_its_slot() {
        let d = Deployment {
            timeline: vec![
                change("t1", "promoted", "a"),
                change("t2", "canary", "b"),
                change("t3", "promoted", "b"),
                change("t4", "rolled_back", "a"),
                change("t5", "shadow", "b"),
            ],
            ..Deployment::default()
        };
        assert_eq!(d.deployed_at("a", "production"), Some("t4"));
        assert_eq!(d.deployed_at("b", "canary"), Some("t2"));
        assert_eq!(d.deployed_at("b", "shadow"), Some("t5"));
        assert_eq!(d.deployed_at("c", "production"), None);
        assert_eq!(d.deployed_at("a", "elsewhere"), None);
        // Registries written before the timeline existed still read.
        let old: Deployment = serde_json::from_str(
            r#"{"production":"a","history":[],"canary":null,"shadow":null,"updated_at":null}"#,
        )
        .unwrap();
        assert!(old.timeline.is_empty());
    }

    #[test]
    fn only_a_canary_a_policy_put_on_is_the_policys_to_judge() {
        let mut by_policy = change("t2", "canary", "b");
        by_policy.reason = "better on the recent test split".into();
        let mut d = Deployment {
            canary: Some(Canary {
                id: "b".into(),
                fraction: 0.1,
            }),
            timeline: vec![change("t1", "canary", "b"), by_policy],
            ..Deployment::default()
        };
        assert_eq!(
            d.policy_canary(),
            Some(("b", "t2", "better on the recent test split"))
        );
        // Set again by a user since: theirs.
        d.timeline.push(change("t3", "canary", "b"));
        assert_eq!(d.policy_canary(), None);
        d.canary = None;
        assert_eq!(d.policy_canary(), None);
    }
}
