//! When to retrain, and what to do with the candidate: the retraining policy as a pure state
//! machine. The live monitor feeds it each evaluation's reports and the outcome of the
//! retraining it asked for; it answers with what to do (train, put on canary, promote, give
//! up). Never two retrains at once: while one runs, or while its candidate is on canary, nothing
//! else starts.

use crate::report::ModelReport;

/// `[monitor.retrain]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Retrain when the production model's realised ROC AUC falls below this ...
    pub min_roc_auc: f64,
    /// ... or its drift share reaches this ...
    pub max_drift_share: f64,
    /// ... for this many consecutive evaluations.
    pub for_windows: usize,
    /// Put a better candidate on canary, then promote it (else it is only registered).
    pub auto_promote: bool,
    /// The canary's share of events.
    pub canary_fraction: f64,
    /// How long the canary runs before it is promoted (µs).
    pub canary_for_us: i64,
    /// Train on at least this many labelled events, however few the window joined.
    pub min_train_rows: usize,
}

/// Where the policy stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Watching production: `degraded` consecutive evaluations so far; no retraining before
    /// `quiet_until_us` (one `canary_for` after the last retraining ended: its candidate
    /// promoted, taken off or not better).
    Watching {
        /// Consecutive degraded evaluations.
        degraded: usize,
        /// No retraining before this (µs).
        quiet_until_us: i64,
    },
    /// A retraining job runs.
    Retraining {
        /// Why it started.
        reason: String,
    },
    /// A candidate is on canary since `since_us`.
    Canary {
        /// The candidate.
        model_id: String,
        /// When it went on canary (µs).
        since_us: i64,
        /// Why it was trained.
        reason: String,
    },
}

/// What the monitor should do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing.
    Wait,
    /// Train a candidate on the latest `rows` labelled events with production's settings.
    Retrain {
        /// Why (for the card and the registry history).
        reason: String,
        /// How many labelled events to train on (those of the window).
        rows: usize,
    },
    /// Put the candidate on canary for this share of events.
    Canary {
        /// The candidate.
        model_id: String,
        /// Its share.
        fraction: f64,
        /// Why.
        reason: String,
    },
    /// Promote the canary.
    Promote {
        /// The candidate.
        model_id: String,
        /// Why.
        reason: String,
    },
    /// Take the canary off (it regressed).
    Abandon {
        /// The candidate.
        model_id: String,
        /// Why.
        reason: String,
    },
}

/// How a retraining job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A candidate was registered; its ROC AUC and production's on the same recent test split.
    Trained {
        /// The candidate's id.
        model_id: String,
        /// Its ROC AUC on the recent test split.
        candidate_roc_auc: f64,
        /// Production's on the same rows.
        production_roc_auc: f64,
    },
    /// The job failed (too few labels, one class only, an I/O error).
    Failed {
        /// What happened.
        error: String,
    },
}

/// A canary regresses when its realised ROC AUC is this much below production's.
pub const CANARY_TOLERANCE: f64 = 0.01;

/// The retraining policy's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrainer {
    policy: Policy,
    /// Where it stands.
    pub phase: Phase,
}

impl Retrainer {
    /// Watching, nothing degraded yet.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            phase: Phase::Watching {
                degraded: 0,
                quiet_until_us: i64::MIN,
            },
        }
    }

    /// The policy of a restarted monitor: judging the candidate it had put on canary
    /// (`(model, since µs, why)`, from the registry), if one is still there; otherwise watching.
    pub fn resume(policy: Policy, canary: Option<(String, i64, String)>) -> Self {
        let mut r = Self::new(policy);
        if let Some((model_id, since_us, reason)) = canary {
            r.phase = Phase::Canary {
                model_id,
                since_us,
                reason,
            };
        }
        r
    }

    /// When a candidate went on canary, if one is: the span its comparison with production
    /// covers.
    pub fn canary_since(&self) -> Option<i64> {
        match &self.phase {
            Phase::Canary { since_us, .. } => Some(*since_us),
            _ => None,
        }
    }

    fn watch(&mut self, now_us: i64) {
        self.phase = Phase::Watching {
            degraded: 0,
            quiet_until_us: now_us.saturating_add(self.policy.canary_for_us),
        };
    }

    /// Takes in one evaluation at `now_us`: the production model's report over the window and,
    /// while a candidate is on canary, production's and the canary's over the span since it
    /// went on canary.
    pub fn evaluated(
        &mut self,
        production: Option<&ModelReport>,
        canary: Option<&ModelReport>,
        now_us: i64,
    ) -> Action {
        match &mut self.phase {
            Phase::Watching {
                degraded,
                quiet_until_us,
            } => {
                let Some(p) = production else {
                    return Action::Wait;
                };
                if now_us < *quiet_until_us {
                    return Action::Wait;
                }
                let Some(why) = degradation(&self.policy, p) else {
                    *degraded = 0;
                    return Action::Wait;
                };
                *degraded += 1;
                if *degraded < self.policy.for_windows {
                    return Action::Wait;
                }
                let reason = format!(
                    "{why} in {} consecutive evaluations (model {})",
                    self.policy.for_windows, p.model_id
                );
                self.phase = Phase::Retraining {
                    reason: reason.clone(),
                };
                Action::Retrain {
                    reason,
                    rows: p.labels_joined.max(self.policy.min_train_rows),
                }
            }
            Phase::Retraining { .. } => Action::Wait,
            Phase::Canary { .. } => self.judge_canary(production, canary, now_us),
        }
    }

    /// The candidate on canary against production over the span since it went on canary:
    /// taken off at once if it regresses; promoted after `canary_for` once it has a realised
    /// ROC AUC that does not; taken off if none comes within three `canary_for`.
    fn judge_canary(
        &mut self,
        production: Option<&ModelReport>,
        canary: Option<&ModelReport>,
        now_us: i64,
    ) -> Action {
        let Phase::Canary {
            model_id,
            since_us,
            reason,
        } = &self.phase
        else {
            return Action::Wait;
        };
        let (model_id, since_us, reason) = (model_id.clone(), *since_us, reason.clone());
        let auc = |r: Option<&ModelReport>| r.and_then(|r| r.realised.as_ref()).map(|m| m.roc_auc);
        let (theirs, ours) = (
            auc(production),
            auc(canary.filter(|c| c.model_id == model_id)),
        );
        let elapsed = now_us - since_us;
        let verdict = match (ours, theirs) {
            (Some(o), Some(t)) if o < t - CANARY_TOLERANCE => Err(format!(
                "canary regressed: realised ROC AUC {o:.4} against production's {t:.4}"
            )),
            _ if elapsed < self.policy.canary_for_us => return Action::Wait,
            (Some(o), Some(t)) => Ok(format!(
                "realised ROC AUC {o:.4} against production's {t:.4}"
            )),
            (Some(o), None) => Ok(format!("realised ROC AUC {o:.4}")),
            (None, _) if elapsed < 3 * self.policy.canary_for_us => return Action::Wait,
            (None, _) => Err(format!(
                "no realised ROC AUC for the canary after {} s: not enough labels to judge it",
                elapsed / 1_000_000
            )),
        };
        self.watch(now_us);
        match verdict {
            Ok(verdict) => Action::Promote {
                model_id,
                reason: format!("canary without regression ({verdict}); retrained: {reason}"),
            },
            Err(reason) => Action::Abandon { model_id, reason },
        }
    }

    /// The candidate left its canary slot without the policy (a user took it off or put
    /// another model there): the policy goes back to watching.
    pub fn canary_gone(&mut self, now_us: i64) {
        if matches!(self.phase, Phase::Canary { .. }) {
            self.watch(now_us);
        }
    }

    /// The candidate on canary, if one is.
    pub fn candidate(&self) -> Option<&str> {
        match &self.phase {
            Phase::Canary { model_id, .. } => Some(model_id),
            _ => None,
        }
    }

    /// Takes in the end of the retraining job it asked for.
    pub fn retrained(&mut self, outcome: Outcome, now_us: i64) -> Action {
        let Phase::Retraining { reason } = &self.phase else {
            return Action::Wait;
        };
        let reason = reason.clone();
        match outcome {
            Outcome::Trained {
                model_id,
                candidate_roc_auc,
                production_roc_auc,
            } if candidate_roc_auc > production_roc_auc && self.policy.auto_promote => {
                self.phase = Phase::Canary {
                    model_id: model_id.clone(),
                    since_us: now_us,
                    reason: reason.clone(),
                };
                Action::Canary {
                    model_id,
                    fraction: self.policy.canary_fraction,
                    reason: format!(
                        "better on the recent test split: ROC AUC {candidate_roc_auc:.4} against production's {production_roc_auc:.4}; retrained: {reason}"
                    ),
                }
            }
            Outcome::Trained { .. } | Outcome::Failed { .. } => {
                self.watch(now_us);
                Action::Wait
            }
        }
    }
}

/// Why a production report counts as degraded, if it does.
fn degradation(policy: &Policy, report: &ModelReport) -> Option<String> {
    if let Some(m) = &report.realised
        && m.roc_auc < policy.min_roc_auc
    {
        return Some(format!(
            "realised ROC AUC {:.4} below {}",
            m.roc_auc, policy.min_roc_auc
        ));
    }
    match report.drift_share {
        Some(share) if share >= policy.max_drift_share => {
            let drifted: Vec<&str> = report
                .drifted()
                .filter(|d| d.in_share)
                .map(|d| d.feature.as_str())
                .collect();
            Some(format!(
                "drift share {share:.2} at or above {} ({})",
                policy.max_drift_share,
                drifted.join(", ")
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use quiver_models::metrics::{Metrics, evaluate};

    use super::*;

    fn policy() -> Policy {
        Policy {
            min_roc_auc: 0.8,
            max_drift_share: 0.5,
            for_windows: 3,
            auto_promote: true,
            canary_fraction: 0.1,
            canary_for_us: 60_000_000,
            min_train_rows: 100,
        }
    }

    fn metrics(auc_like: bool) -> Metrics {
        // Perfectly ranked (AUC 1) or inverted (AUC 0).
        let scores = [0.9, 0.8, 0.2, 0.1];
        let labels = if auc_like {
            [true, true, false, false]
        } else {
            [false, false, true, true]
        };
        evaluate(&scores, &labels, 0.5)
    }

    fn report(model: &str, good: bool, share: Option<f64>) -> ModelReport {
        ModelReport {
            model_id: model.into(),
            variant: "production".into(),
            served: 1_000,
            positive_decisions: 10,
            latency: None,
            drift: Vec::new(),
            drift_share: share,
            score_drift: None,
            labels_joined: 900,
            labels_pending: 100,
            realised: Some(metrics(good)),
            estimated_roc_auc: None,
            test: metrics(true),
        }
    }

    #[test]
    fn retrains_after_enough_consecutive_degraded_windows_only() {
        let mut r = Retrainer::new(policy());
        let bad = report("p", false, Some(0.0));
        let good = report("p", true, Some(0.0));
        assert_eq!(r.evaluated(Some(&bad), None, 0), Action::Wait);
        assert_eq!(r.evaluated(Some(&bad), None, 1), Action::Wait);
        assert_eq!(r.evaluated(Some(&good), None, 2), Action::Wait, "reset");
        assert_eq!(r.evaluated(Some(&bad), None, 3), Action::Wait);
        assert_eq!(r.evaluated(Some(&bad), None, 4), Action::Wait);
        let Action::Retrain { reason, rows } = r.evaluated(Some(&bad), None, 5) else {
            panic!("a retrain after three");
        };
        assert!(
            reason.contains("realised ROC AUC 0.0000 below 0.8"),
            "{reason}"
        );
        assert_eq!(rows, 900);
        // Never two at once.
        assert_eq!(r.evaluated(Some(&bad), None, 6), Action::Wait);
        assert!(matches!(r.phase, Phase::Retraining { .. }));
        // Drift alone counts too.
        let mut d = Retrainer::new(Policy {
            for_windows: 1,
            ..policy()
        });
        let drifted = report("p", true, Some(0.6));
        assert!(matches!(
            d.evaluated(Some(&drifted), None, 0),
            Action::Retrain { reason, .. } if reason.contains("drift share 0.60")
        ));
    }

    fn trained(candidate: f64) -> Outcome {
        Outcome::Trained {
            model_id: "c".into(),
            candidate_roc_auc: candidate,
            production_roc_auc: 0.6,
        }
    }

    fn canary(good: bool) -> ModelReport {
        ModelReport {
            model_id: "c".into(),
            variant: "canary".into(),
            ..report("c", good, None)
        }
    }

    /// A policy that retrained after one bad window and put candidate `c` on canary at 0.
    fn on_canary() -> Retrainer {
        let mut r = Retrainer::new(Policy {
            for_windows: 1,
            ..policy()
        });
        r.evaluated(Some(&report("p", false, None)), None, 0);
        assert!(matches!(
            r.retrained(trained(0.9), 0),
            Action::Canary { .. }
        ));
        r
    }

    #[test]
    fn a_better_candidate_goes_on_canary_and_is_promoted_after_canary_for() {
        let mut r = Retrainer::new(Policy {
            for_windows: 1,
            ..policy()
        });
        let bad = report("p", false, None);
        assert!(matches!(
            r.evaluated(Some(&bad), None, 0),
            Action::Retrain { .. }
        ));
        let Action::Canary {
            fraction, reason, ..
        } = r.retrained(trained(0.9), 10)
        else {
            panic!("on canary");
        };
        assert_eq!(fraction, 0.1);
        assert!(
            reason.contains("0.9000 against production's 0.6000"),
            "{reason}"
        );
        let reason = promoted_after_canary_for(&mut r, &bad);
        assert!(reason.contains("canary without regression"), "{reason}");
        assert!(matches!(r.phase, Phase::Watching { degraded: 0, .. }));
    }

    /// A good canary "c" that went on at 10 µs: waited on, then promoted after `canary_for`;
    /// the promotion's reason.
    fn promoted_after_canary_for(r: &mut Retrainer, production: &ModelReport) -> String {
        assert_eq!(
            r.evaluated(Some(production), Some(&canary(true)), 20),
            Action::Wait
        );
        let Action::Promote { model_id, reason } =
            r.evaluated(Some(production), Some(&canary(true)), 10 + 60_000_000)
        else {
            panic!("promoted");
        };
        assert_eq!(model_id, "c");
        reason
    }

    #[test]
    fn a_restarted_policy_goes_on_judging_its_canary_from_when_it_went_on() {
        let mut r = Retrainer::resume(policy(), Some(("c".into(), 10, "why".into())));
        assert_eq!(r.canary_since(), Some(10));
        let reason = promoted_after_canary_for(&mut r, &report("p", false, None));
        assert!(reason.ends_with("retrained: why"), "{reason}");
        assert_eq!(Retrainer::resume(policy(), None), Retrainer::new(policy()));
    }

    #[test]
    fn a_canary_that_regresses_has_no_labels_or_is_removed_is_not_promoted() {
        let (good, bad) = (report("p", true, None), report("p", false, None));
        // Worse than production: taken off at once.
        let mut r = on_canary();
        assert!(matches!(
            r.evaluated(Some(&good), Some(&canary(false)), 5),
            Action::Abandon { reason, .. } if reason.contains("regressed")
        ));
        // Quiet for one canary_for after that; then a candidate no better than production is
        // only registered.
        assert_eq!(r.evaluated(Some(&bad), None, 6), Action::Wait);
        assert!(matches!(
            r.evaluated(Some(&bad), None, 5 + 60_000_000),
            Action::Retrain { .. }
        ));
        assert_eq!(r.retrained(trained(0.5), 7), Action::Wait);
        assert!(matches!(r.phase, Phase::Watching { degraded: 0, .. }));
        // No labels yet: not promoted on nothing; it waits, then is taken off.
        let mut r = on_canary();
        let unlabelled = ModelReport {
            realised: None,
            ..canary(true)
        };
        assert_eq!(
            r.evaluated(Some(&bad), Some(&unlabelled), 61_000_000),
            Action::Wait
        );
        assert!(matches!(
            r.evaluated(Some(&bad), Some(&unlabelled), 181_000_000),
            Action::Abandon { reason, .. } if reason.contains("not enough labels")
        ));
        // Taken off by a user: the policy goes back to watching.
        let mut r = on_canary();
        assert_eq!(r.candidate(), Some("c"));
        r.canary_gone(5);
        assert!(matches!(r.phase, Phase::Watching { .. }));
    }
}
