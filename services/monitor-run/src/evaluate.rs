//! One evaluation of the window: each model's report as gauges and a row of the `monitor`
//! table, then the retraining policy's turn (and what it asks for: a job, a canary, a
//! promotion, a canary taken off).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, TryRecvError};

use quiver_core::{Catalog, Config};
use quiver_features::ViewCatalog;
use quiver_models::{Canary, Deployment, Registry};
use quiver_monitor::ModelReport;
use quiver_monitor::report::{Settings, Window, report};
use quiver_monitor::retrain::{Action, Outcome, Policy, Retrainer};
use quiver_monitor::tracker::{Slot, Tracker};

use crate::retrain::{self, Job};
use crate::{Reference, Result, events, history};

/// What an evaluation needs: the registry, the monitor table, what was read of them, and the
/// retraining policy with its running job.
pub(crate) struct Evaluation {
    registry: Registry,
    history: quiver_store::SegmentStore,
    settings: Settings,
    /// Each model's test metrics and baseline, read once (`None`: it cannot be reported).
    references: BTreeMap<String, Reference>,
    /// The models whose gauges show figures, to blank them once they leave the window.
    shown: BTreeSet<String>,
    /// The drift series (model, feature, test) shown, to blank one whose test changed.
    drift_shown: BTreeSet<(String, String, &'static str)>,
    /// The retraining policy, when `monitor.retrain.enabled`.
    retrainer: Option<Retrainer>,
    /// The retraining job running, and what it needs to start one.
    job: Option<Receiver<Outcome>>,
    template: Job,
}

impl Evaluation {
    pub(crate) fn new(config: &Config, catalog: &Catalog, views: &ViewCatalog) -> Result<Self> {
        let m = &config.monitor;
        let r = &m.retrain;
        let registry = Registry::open(&config.store.dir)?;
        // A candidate this monitor's policy put on canary before a restart is judged on.
        let canary = registry
            .deployment()?
            .policy_canary()
            .and_then(|(id, at, why)| {
                let since = chrono::DateTime::parse_from_rfc3339(at).ok()?;
                Some((id.to_string(), since.timestamp_micros(), why.to_string()))
            });
        if let Some((id, _, _)) = &canary {
            events::canary_resumed(id);
        }
        Ok(Self {
            registry,
            history: history::open(&config.store.dir)?,
            settings: Settings {
                min_rows: m.min_rows,
                lifetime: views.lifetime_inputs(),
                ..Settings::default()
            },
            references: BTreeMap::new(),
            shown: BTreeSet::new(),
            drift_shown: BTreeSet::new(),
            retrainer: r.enabled.then(|| {
                Retrainer::resume(
                    Policy {
                        min_roc_auc: r.min_roc_auc,
                        max_drift_share: r.max_drift_share,
                        for_windows: r.for_windows,
                        auto_promote: r.auto_promote,
                        canary_fraction: r.canary_fraction,
                        canary_for_us: r.canary_for_us(),
                        min_train_rows: m.min_rows.saturating_mul(5),
                    },
                    canary,
                )
            }),
            job: None,
            template: Job {
                config: config.clone(),
                catalog: catalog.clone(),
                views: views.clone(),
                production: String::new(),
                reason: String::new(),
                rows: 0,
            },
        })
    }

    /// Takes in the end of the retraining job, if it ended.
    pub(crate) fn retraining_done(&mut self, now: i64) {
        let done = match self.job.as_ref().map(|j| j.try_recv()) {
            None | Some(Err(TryRecvError::Empty)) => return,
            Some(Ok(done)) => done,
            // The job's thread ended without an answer (it panicked).
            Some(Err(TryRecvError::Disconnected)) => Outcome::Failed {
                error: "the retraining job stopped without an outcome".into(),
            },
        };
        self.job = None;
        self.conclude(done, now);
    }

    /// Takes in how a retraining ended (or that it could not start) and does what the policy
    /// says next.
    fn conclude(&mut self, outcome: Outcome, now: i64) {
        events::retrained(&outcome);
        if let Some(r) = &mut self.retrainer {
            let action = r.retrained(outcome, now);
            self.act(action);
        }
    }

    /// Does what the policy asked for; a registry that cannot be written is logged (the
    /// policy goes on).
    fn act(&mut self, action: Action) {
        let done = match &action {
            Action::Wait => return,
            Action::Retrain { reason, rows } => {
                let production = self.registry.deployment().ok().and_then(|d| d.production);
                match production {
                    Some(production) => {
                        self.job = Some(retrain::start(Job {
                            production,
                            reason: reason.clone(),
                            rows: *rows,
                            ..self.template.clone()
                        }));
                        Ok(())
                    }
                    None => {
                        // Nothing to retrain: the policy must not wait for a job.
                        let failed = Outcome::Failed {
                            error: "no production model to retrain".into(),
                        };
                        self.conclude(failed, crate::now_us());
                        Err("no production model".to_string())
                    }
                }
            }
            Action::Canary {
                model_id,
                fraction,
                reason,
            } => self
                .registry
                .set_canary_because(
                    Some(Canary {
                        id: model_id.clone(),
                        fraction: *fraction,
                    }),
                    reason,
                )
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Action::Promote { model_id, reason } => self
                .registry
                .promote_because(model_id, reason)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Action::Abandon { reason, .. } => self
                .registry
                .set_canary_because(None, reason)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        events::retrain_step(&action, done.err().as_deref());
    }

    /// The policy's view of this evaluation: production's report over the window, or — while
    /// a candidate is on canary — production's and the canary's over the canary's span.
    fn policy(
        &mut self,
        tracker: &mut Tracker,
        reports: &[ModelReport],
        deployment: &Deployment,
        now: i64,
    ) {
        let Some(retrainer) = &self.retrainer else {
            return;
        };
        let (candidate, canary_since) = (
            retrainer.candidate().map(String::from),
            retrainer.canary_since(),
        );
        let Some(production) = deployment.production.clone() else {
            return;
        };
        // A candidate a user took off canary (or replaced) is no longer the policy's to judge.
        if let Some(candidate) = candidate
            && deployment.canary.as_ref().is_none_or(|c| c.id != candidate)
            && let Some(r) = self.retrainer.as_mut()
        {
            r.canary_gone(now);
            return;
        }
        let action = match canary_since {
            None => {
                let report = reports
                    .iter()
                    .find(|r| r.model_id == production && r.variant == "production");
                self.retrainer
                    .as_mut()
                    .map_or(Action::Wait, |r| r.evaluated(report, None, now))
            }
            Some(since) => {
                let canary = deployment.canary.as_ref().map(|c| c.id.clone());
                // Both models over the same span, gathered once.
                let spans = tracker.windows_since(now, since);
                let mut span = |variant: &str, model: &str| {
                    spans
                        .iter()
                        .find(|(s, _)| s.variant == variant && s.model_id == model)
                        .and_then(|(slot, window)| self.report_of(slot, window))
                };
                let theirs = span("production", &production);
                let ours = canary.as_deref().and_then(|c| span("canary", c));
                self.retrainer.as_mut().map_or(Action::Wait, |r| {
                    r.evaluated(theirs.as_ref(), ours.as_ref(), now)
                })
            }
        };
        self.act(action);
    }

    /// A model's report over `window`, if it can be reported.
    fn report_of(&mut self, slot: &Slot, window: &Window) -> Option<ModelReport> {
        if !self.references.contains_key(&slot.model_id) {
            let reference = load_reference(&self.registry, &slot.model_id);
            self.references.insert(slot.model_id.clone(), reference);
        }
        let (test, baseline) = self.references.get(&slot.model_id)?.as_ref()?;
        Some(report(
            &slot.model_id,
            &slot.variant,
            baseline,
            test,
            window,
            &self.settings,
        ))
    }

    /// Reports every model of the window ending `now`: gauges and a row each in the monitor
    /// table. Returns how many models were reported.
    pub(crate) fn run(
        &mut self,
        tracker: &mut Tracker,
        freshest: &BTreeMap<String, i64>,
        now: i64,
    ) -> Result<usize> {
        tracker.expire(now);
        let deployment = self.registry.deployment()?;
        for (model, variant) in deployment.slots() {
            if let Some(at) = deployment.deployed_at(model, variant)
                && let Ok(t) = chrono::DateTime::parse_from_rfc3339(at)
            {
                events::deployed(model, variant, t.timestamp_millis() as f64 / 1_000.0);
            }
        }
        let mut reports = Vec::new();
        for (slot, window) in tracker.windows(now) {
            if let Some(r) = self.report_of(&slot, &window) {
                reports.push(r);
            }
        }
        // A model in two slots of the window (a canary just promoted) shows the figures of
        // the slot it holds now: emitted last.
        let holds = |r: &&quiver_monitor::ModelReport| {
            deployment
                .slots()
                .any(|(m, v)| m == r.model_id && v == r.variant)
        };
        let (current, former): (Vec<_>, Vec<_>) = reports.iter().partition(holds);
        let (mut shown, mut drift_shown) = (BTreeSet::new(), BTreeSet::new());
        for r in former.into_iter().chain(current) {
            events::reported(r);
            shown.insert(r.model_id.clone());
            for d in &r.drift {
                drift_shown.insert((r.model_id.clone(), d.feature.clone(), d.drift.test.as_str()));
            }
        }
        for gone in self.shown.difference(&shown) {
            events::left_window(gone);
        }
        // A feature whose test changed (its values became few, or many) leaves its old series.
        for (model, feature, test) in self.drift_shown.difference(&drift_shown) {
            events::drift_gone(model, feature, test);
        }
        self.shown = shown;
        self.drift_shown = drift_shown;
        // Each view's freshness: now − the latest event time in its feature log (s).
        let freshness: BTreeMap<&str, f64> = freshest
            .iter()
            .map(|(view, latest)| (view.as_str(), (now - latest) as f64 / 1e6))
            .collect();
        let rows: Vec<history::Row<'_>> = reports
            .iter()
            .map(|r| history::Row {
                report: r,
                deployed_at: deployment.deployed_at(&r.model_id, &r.variant),
                freshness: &freshness,
            })
            .collect();
        history::append(&self.history, tracker.window_start(now), now, &rows)?;
        self.policy(tracker, &reports, &deployment, now);
        Ok(reports.len())
    }
}

/// A model's test metrics and baseline, or `None` (logged once) if it cannot be reported.
fn load_reference(registry: &Registry, model_id: &str) -> Reference {
    let card = match registry.card(model_id) {
        Ok(card) => card,
        Err(e) => {
            events::unreportable(model_id, &format!("not in the registry ({e})"));
            return None;
        }
    };
    match registry.baseline(model_id) {
        Ok(Some(baseline)) => Some((card.test, baseline)),
        Ok(None) => {
            events::unreportable(
                model_id,
                "no training baseline (trained before baselines were kept)",
            );
            None
        }
        Err(e) => {
            events::unreportable(model_id, &format!("its baseline cannot be read ({e})"));
            None
        }
    }
}
