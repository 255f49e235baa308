//! The deployed models: the registry's `registry.json` (production, canary, shadow), re-read
//! when it changes, and the models it names, loaded once per id.
//!
//! A model that cannot be loaded (its file missing or unreadable) is not fatal: the events it
//! should decide go to the dead-letter topic as `model_unavailable`, and it is tried again at
//! the next reload check.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use quiver_models::{Deployment, FeatureLookup, Model, Registry, Rejection};
use tracing::warn;

use crate::events;
use crate::prediction::{Outcome, ShadowVerdict, Variant, Verdict, canary_point};
use crate::{Error, Result};

/// The registry as this worker last read it.
#[derive(Debug)]
pub(crate) struct Models {
    registry: Registry,
    deployment: Deployment,
    stamp: Option<SystemTime>,
    loaded: HashMap<String, std::result::Result<Arc<Model>, String>>,
    checked: Option<Instant>,
    every: Duration,
    announced: bool,
}

impl Models {
    pub(crate) fn open(store_dir: &std::path::Path, every: Duration) -> Result<Self> {
        Ok(Self {
            registry: Registry::open(store_dir)?,
            deployment: Deployment::default(),
            stamp: None,
            loaded: HashMap::new(),
            checked: None,
            every,
            announced: false,
        })
    }

    /// The production model's id, if one is deployed.
    pub(crate) fn production(&self) -> Option<&str> {
        self.deployment.production.as_deref()
    }

    /// Re-reads the deployment when `registry.json` changed (checked at most every reload
    /// interval); forgets models that failed to load, so they are tried again.
    pub(crate) fn refresh(&mut self) {
        if self.checked.is_some_and(|c| c.elapsed() < self.every) {
            return;
        }
        self.checked = Some(Instant::now());
        self.loaded.retain(|_, m| m.is_ok());
        let stamp = std::fs::metadata(self.registry.deployment_path())
            .and_then(|m| m.modified())
            .ok();
        if stamp.is_some() && stamp == self.stamp {
            return;
        }
        match self.registry.deployment() {
            Ok(deployment) => {
                if deployment != self.deployment || !self.announced {
                    self.announced = true;
                    events::deployment_loaded(
                        deployment.production.as_deref().unwrap_or("none"),
                        deployment.canary.as_ref().map_or("none", |c| c.id.as_str()),
                        deployment.shadow.as_deref().unwrap_or("none"),
                    );
                }
                self.deployment = deployment;
                self.stamp = stamp;
            }
            Err(error) => warn!(%error, "cannot read the deployment; keeping the previous one"),
        }
    }

    fn model(&mut self, id: &str) -> std::result::Result<Arc<Model>, String> {
        if let Some(m) = self.loaded.get(id) {
            return m.clone();
        }
        let loaded = self
            .registry
            .model(id)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        if let Err(error) = &loaded {
            warn!(model = id, %error, "cannot load a deployed model");
        }
        self.loaded.insert(id.to_string(), loaded.clone());
        loaded
    }

    /// The outcome for one event (`None` without a production model): the canary decides the
    /// events whose id hashes below its fraction, production the rest; a shadow is scored
    /// alongside. An event the deciding model cannot score is rejected with the reason.
    pub(crate) fn decide<F: FeatureLookup + ?Sized>(
        &mut self,
        features: &F,
        event_id: &str,
    ) -> Option<Outcome> {
        let production = self.deployment.production.clone()?;
        let (id, variant) = match &self.deployment.canary {
            Some(c) if canary_point(event_id) < c.fraction => (c.id.clone(), Variant::Canary),
            _ => (production, Variant::Production),
        };
        let scored = self
            .model(&id)
            .map_err(|detail| {
                Error::Models(quiver_models::Error::Rejected {
                    reason: Rejection::ModelUnavailable,
                    detail: format!("model {id}: {detail}"),
                })
            })
            .and_then(|m| Ok((m.score(features)?, m)));
        let (score, model) = match scored {
            Ok(ok) => ok,
            Err(Error::Models(quiver_models::Error::Rejected { reason, detail })) => {
                return Some(Outcome::Rejected {
                    reason: reason.code().to_string(),
                    detail,
                });
            }
            Err(other) => {
                return Some(Outcome::Rejected {
                    reason: Rejection::VectorRejected.code().to_string(),
                    detail: other.to_string(),
                });
            }
        };
        let shadow = self.deployment.shadow.clone().and_then(|sid| {
            let m = self.model(&sid).ok()?;
            let score = m.score(features).ok()?;
            Some(ShadowVerdict {
                decision: m.decide(score),
                model_id: sid,
                score,
            })
        });
        Some(Outcome::Scored(Verdict {
            model_id: id,
            variant,
            decision: model.decide(score),
            score,
            shadow,
        }))
    }
}
