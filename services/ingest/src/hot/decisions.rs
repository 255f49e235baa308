//! The hot path's decisions: scoring the drafts, claiming the batch's decisions in Redis (or
//! adopting another member's), and producing the predictions and scoring dead letters.

use std::sync::Arc;

use chrono::Utc;
use quiver_features::Value;
use quiver_online::Claim;

use super::{Draft, DraftFeatures};
use crate::claims::{ClaimBatch, ClaimBatchRef, ClaimRecord, ClaimRecordRef, Present, runs};
use crate::delivery::{Acked, Acks, Origin};
use crate::partition::Buffer;
use crate::prediction::{Features, Fields, Millis, Outcome, Prediction, rfc3339_millis};
use crate::scores::ScoreRow;
use crate::worker::Worker;
use crate::{Error, Result, events};

impl Worker {
    /// Scores the drafts that have every vector and no claim.
    pub(super) fn score(&mut self, s: usize, drafts: &mut [Draft]) {
        let source = &self.sources[s];
        if !source.scored {
            return;
        }
        let names = &self.feature_names[s];
        let now = Utc::now().timestamp_micros();
        let (mut no_model, mut past_state) = (0, 0);
        for draft in drafts.iter_mut().filter(|d| !d.claimed) {
            if draft.vectors.iter().any(Option::is_none) {
                past_state += 1;
                continue;
            }
            let features = DraftFeatures { names, draft };
            match self.models.decide(&features, &draft.event_id) {
                Some(outcome) => {
                    draft.outcome = Some(outcome);
                    draft.prediction_time = now;
                }
                None => no_model += 1,
            }
        }
        if no_model > 0 {
            events::unscored("no_model", no_model);
        }
        if past_state > 0 {
            events::unscored("replayed", past_state);
        }
        self.stats
            .unscored
            .fetch_add(no_model + past_state, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records the new decisions of the batch; ranges another member recorded first are
    /// adopted (their vectors and verdicts replace this member's). An event inside another
    /// member's range that it recorded no decision for gets none here either.
    pub(super) fn claim(&mut self, s: usize, p: i32, drafts: &mut [Draft]) -> Result<()> {
        let name = self.sources[s].schema.name.clone();
        let ttl = self.settings.claim_ttl;
        loop {
            let state = self
                .partitions
                .get_mut(&(s, p))
                .ok_or_else(|| Error::Fatal("partition vanished".into()))?;
            let known: Vec<(i64, i64)> = state.claims.ranges().copied().collect();
            let mut fresh = Vec::new();
            for (i, draft) in drafts.iter_mut().enumerate() {
                if draft.claimed || draft.outcome.is_none() {
                    continue;
                }
                if known
                    .iter()
                    .any(|(a, b)| *a <= draft.offset && draft.offset <= *b)
                {
                    draft.outcome = None;
                } else {
                    fresh.push(i);
                }
            }
            if fresh.is_empty() {
                return Ok(());
            }
            let offsets: Vec<i64> = fresh.iter().map(|&i| drafts[i].offset).collect();
            let mut adopted = 0;
            for run in runs(&offsets, &known) {
                let members = &fresh[run];
                let (first, last) = (
                    drafts[members[0]].offset,
                    drafts[members[members.len() - 1]].offset,
                );
                let bytes = ClaimBatchRef {
                    first,
                    last,
                    records: members.iter().filter_map(|&i| record(&drafts[i])).collect(),
                }
                .encode();
                let answer = self.online.claim(&name, p, (first, last), &bytes, ttl)?;
                let state = self
                    .partitions
                    .get_mut(&(s, p))
                    .ok_or_else(|| Error::Fatal("partition vanished".into()))?;
                let theirs = match answer {
                    Claim::Recorded => {
                        state.claims.recorded(first, last);
                        for &i in members {
                            drafts[i].claimed = true;
                        }
                        continue;
                    }
                    Claim::Fenced => {
                        // Another member committed these offsets: this one lost the partition
                        // and decides nothing more for them (the group tells it soon).
                        for &i in members {
                            drafts[i].outcome = None;
                        }
                        events::claims_fenced(&name, p, first, last);
                        continue;
                    }
                    Claim::Clashed(theirs) => theirs,
                };
                for bytes in theirs {
                    let other = ClaimBatch::decode(&bytes).map_err(|detail| Error::Claim {
                        source_name: name.clone(),
                        partition: p,
                        detail,
                    })?;
                    state.claims.adopt(other);
                }
                for &i in members {
                    if let Some(claim) = state.claims.take(drafts[i].offset) {
                        adopt(&mut drafts[i], claim);
                        adopted += 1;
                    }
                }
            }
            if adopted > 0 {
                events::claims_adopted(&name, p, adopted);
            }
        }
    }

    /// Produces the batch's predictions and scoring dead letters; adds its score rows.
    pub(super) fn emit(
        &mut self,
        s: usize,
        p: i32,
        drafts: &mut [Draft],
        buffer: &Buffer,
        acks: &Arc<Acks>,
    ) -> Result<()> {
        let source = &self.sources[s];
        let names = &self.feature_names[s];
        let lookup_names: Vec<&str> = source
            .lookups
            .iter()
            .map(|l| l.view().name.as_str())
            .collect();
        let state = self
            .partitions
            .get_mut(&(s, p))
            .ok_or_else(|| Error::Fatal("partition vanished".into()))?;
        let mut replays = 0;
        let mut payload = Vec::new();
        // The deciding model of the previous prediction: one model decides nearly every event.
        let mut model: Option<Arc<str>> = None;
        for draft in drafts {
            let Some(outcome) = &draft.outcome else {
                continue;
            };
            let verdict = match outcome {
                Outcome::Scored(v) => v,
                Outcome::Rejected { reason, detail } => {
                    let span = &buffer.spans[draft.span];
                    self.producer.dead_letter(
                        &source.dlq_topic,
                        Origin {
                            topic: &source.topic,
                            partition: p,
                            offset: draft.offset,
                        },
                        buffer.key(span),
                        buffer.payload(span),
                        reason,
                        detail,
                        acks,
                    )?;
                    events::dead_letter(&source.schema.name, p, draft.offset, reason, detail);
                    self.stats.scoring_dead_letter();
                    continue;
                }
            };
            let features = DraftFeatures { names, draft };
            let pairs: Vec<(&str, &Value)> = names
                .by_view()
                .iter()
                .zip(features.values())
                .flat_map(|(n, vals)| n.iter().map(String::as_str).zip(vals))
                .collect();
            let mut ids = Vec::with_capacity(1 + source.schema.keys.len());
            ids.push((
                source.schema.id.as_deref().unwrap_or("event_id"),
                draft.event_id.as_str(),
            ));
            ids.extend(
                source
                    .schema
                    .keys
                    .iter()
                    .map(String::as_str)
                    .zip(draft.keys.iter().map(String::as_str)),
            );
            let times: Vec<(&str, String)> = lookup_names
                .iter()
                .zip(&draft.lookups)
                .filter_map(|(n, l)| Some((*n, rfc3339_millis(l.event_time_max?))))
                .collect();
            let freshness: Vec<(&str, &str)> =
                times.iter().map(|(n, t)| (*n, t.as_str())).collect();
            let prediction = Prediction {
                ids: Fields(&ids),
                model_id: &verdict.model_id,
                variant: verdict.variant,
                score: verdict.score,
                decision: verdict.decision,
                features: Features(&pairs),
                event_time_max: Fields(&freshness),
                event_time: Millis(draft.time),
                prediction_time: Millis(draft.prediction_time),
                shadow: verdict.shadow.as_ref(),
            };
            payload.clear();
            let features = prediction.write_json(&mut payload);
            let span = &buffer.spans[draft.span];
            let model_id = match &model {
                Some(m) if **m == *verdict.model_id => Arc::clone(m),
                _ => Arc::clone(model.insert(Arc::from(verdict.model_id.as_str()))),
            };
            self.producer.prediction(
                &self.settings.predictions_topic,
                draft.keys.first().map_or("", String::as_str),
                &payload,
                acks,
                Acked {
                    model_id,
                    variant: verdict.variant,
                    decision: verdict.decision,
                    event_timestamp_ms: span.timestamp_ms,
                },
            )?;
            replays += u64::from(draft.repeated);
            // The draft is done with its ids: the log that follows reads only its vectors.
            state.window.scores.push(ScoreRow {
                event_id: std::mem::take(&mut draft.event_id),
                keys: std::mem::take(&mut draft.keys),
                verdict: verdict.clone(),
                event_time: draft.time,
                prediction_time: draft.prediction_time,
                offset: draft.offset,
                replayed: draft.repeated,
                features: String::from_utf8_lossy(&payload[features]).into_owned(),
            });
        }
        if replays > 0 {
            events::predictions_replayed(replays);
        }
        Ok(())
    }
}

/// Replaces a draft's vectors and verdict with a claim's.
pub(super) fn adopt(draft: &mut Draft, claim: ClaimRecord) {
    draft.vectors = claim.views.into_iter().map(Some).collect();
    draft.lookups = claim.lookups;
    draft.outcome = Some(claim.outcome);
    draft.prediction_time = claim.prediction_time;
    draft.claimed = true;
    draft.repeated = true;
}

/// The claim of a draft with an outcome (`None` without one: nothing to claim).
fn record(draft: &Draft) -> Option<ClaimRecordRef<'_>> {
    Some(ClaimRecordRef {
        offset: draft.offset,
        prediction_time: draft.prediction_time,
        outcome: draft.outcome.as_ref()?,
        views: Present(&draft.vectors),
        lookups: &draft.lookups,
    })
}
