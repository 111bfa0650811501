//! One look at a model's rollout, and the decision it leads to.
//!
//! The controller keeps nothing of its own: the step and when it began are in the rollout
//! document, the arms' outcomes in the training log's commit records, their requests in the
//! serving replicas' counters (labelled by rollout and step). A controller killed at any
//! point is replaced by one that makes the same decision; two at once cannot both make it (every
//! decision names the document it was made on, and only one lands).

use std::{collections::BTreeMap, time::Duration};

use adrank_contracts::{
    arm_requests::ArmRequests,
    events::RolloutArm,
    training_log::{Outcomes, TrainingLog, outcomes},
};
use adrank_registry::{Action, Arm, Decision, Error as RegistryError, Registry, Rollout, rollout::Status};

use super::{
    Analysis, RolloutConfig, Verdict, analyse,
    analysis::{analyse_requests, analyse_shadow},
    metrics,
    replicas::Scrape,
};
use crate::Result;

/// The longest a look waits for a replica's `/metrics` (less when looks are more frequent).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Decides a model's rollouts.
#[derive(Debug, Clone)]
pub struct Controller {
    pub registry: Registry,
    pub log: TrainingLog,
    pub model: String,
    pub config: RolloutConfig,
    /// Who the decisions are recorded as made by.
    pub by: String,
}

/// What one look found and did.
#[derive(Debug, Clone, PartialEq)]
pub enum Look {
    /// No rollout runs: none yet, or the last one ended (or is paused).
    Idle(Option<Rollout>),
    /// Running, and nothing to do yet.
    Waiting { rollout: Rollout, analysis: Analysis, reason: String },
    /// A decision landed: the new document.
    Acted { rollout: Rollout, action: Action, analysis: Option<Analysis> },
    /// Another decision landed first (an operator's, or another controller's): nothing done.
    Raced { rollout: Rollout },
}

impl Controller {
    /// Looks at the model's rollout at `now_ms` and acts on it.
    pub async fn look(&self, now_ms: i64) -> Result<Look> {
        let newest = self.registry.rollout(&self.model).await?;
        if let Some(r) = &newest {
            metrics::standing(&self.model, r, now_ms);
        }
        let rollout = match newest {
            Some(r) if r.status == Status::Running => r,
            Some(r) if r.status == Status::Promoted => {
                // A promotion interrupted between its two writes left `production` behind.
                self.registry.reconcile_rollout(&self.model, &r).await?;
                return Ok(Look::Idle(Some(r)));
            }
            other => return Ok(Look::Idle(other)),
        };
        let held_ms = now_ms - rollout.step_started_ms;
        let held = format!("{} at {}%", duration(held_ms), rollout.weight());
        let (min_ms, max_ms) = (secs_ms(self.config.min_step_secs), secs_ms(self.config.max_step_secs));
        let judged = self.judge(&rollout).await?;
        metrics::looked(&self.model, &judged);
        let Judged { analysis, .. } = judged;
        let reasons = analysis.reasons.join("; ");
        let (action, reason) = match analysis.verdict {
            Verdict::Failed => (Action::RollBack, format!("analysis failed after {held}: {reasons}")),
            Verdict::Passed if held_ms >= min_ms => {
                (Action::Advance, format!("analysis passed after {held}: {reasons}"))
            }
            Verdict::Inconclusive if held_ms >= max_ms => {
                (Action::Pause, format!("inconclusive after {held}, the most a step may wait: {reasons}"))
            }
            Verdict::Passed => {
                let reason = format!("passed; the step has lasted {held} of the {} needed", duration(min_ms));
                return Ok(Look::Waiting { rollout, analysis, reason });
            }
            Verdict::Inconclusive => {
                return Ok(Look::Waiting { rollout, analysis, reason: reasons });
            }
        };
        self.act(rollout, action, reason, Some(analysis)).await
    }

    /// The rollout's arms as they stand, and the verdict on them: at the shadow step the
    /// candidate's calibration on production's traffic; at any other, CTR and calibration from
    /// the outcomes and, when replicas are named, errors and latency from their counts.
    pub async fn judge(&self, rollout: &Rollout) -> Result<Judged> {
        let (production, candidate) = arm_outcomes(&self.log, &self.model, rollout).await?;
        if rollout.is_shadow() {
            let analysis = analyse_shadow(&production, &self.config);
            return Ok(Judged { analysis, outcomes: (production, candidate), requests: None });
        }
        let analysis = analyse(&production, &candidate, &self.config);
        if self.config.serving_metrics.is_empty() {
            let reason = "errors and latency: not watched (rollout.serving_metrics names no replica)";
            let unwatched =
                Analysis { verdict: Verdict::Passed, reasons: vec![reason.into()], figures: BTreeMap::new() };
            return Ok(Judged { analysis: analysis.and(unwatched), outcomes: (production, candidate), requests: None });
        }
        let timeout = SCRAPE_TIMEOUT.min(Duration::from_secs(self.config.analysis_interval_secs));
        let scrape = Scrape::read(&self.config.serving_metrics, timeout).await;
        let requests = scrape.arms(rollout);
        let analysis = analysis.and(analyse_requests(&requests.0, &requests.1, &scrape.unanswered, &self.config));
        Ok(Judged { analysis, outcomes: (production, candidate), requests: Some(requests) })
    }

    async fn act(&self, rollout: Rollout, action: Action, reason: String, analysis: Option<Analysis>) -> Result<Look> {
        let figures = analysis.as_ref().map(|a| a.figures.clone()).unwrap_or_default();
        let decision = Decision { expected_seq: rollout.seq, by: self.by.clone(), reason, figures };
        match self.registry.act_on_rollout(&self.model, action, decision).await {
            Ok(next) => {
                metrics::decided(&self.model, action);
                metrics::standing(&self.model, &next, adrank_contracts::events::now_ms());
                Ok(Look::Acted { rollout: next, action, analysis })
            }
            Err(RegistryError::RolloutChanged { .. }) => Ok(Look::Raced { rollout }),
            Err(e) => Err(e.into()),
        }
    }
}

/// A rollout's arms, (production, candidate), and the verdict on them.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub analysis: Analysis,
    /// From the training log.
    pub outcomes: (Outcomes, Outcomes),
    /// From the serving replicas, when any are named (and not at the shadow step).
    pub requests: Option<(ArmRequests, ArmRequests)>,
}

/// The outcomes of a rollout's two arms (production, candidate) so far, from the training log.
pub async fn arm_outcomes(log: &TrainingLog, model: &str, rollout: &Rollout) -> Result<(Outcomes, Outcomes)> {
    let totals = outcomes::sum(&log.all_commits().await?);
    let arm = |arm: Arm, version: u64| {
        let tag = RolloutArm { id: rollout.id, arm: arm.as_str().into() };
        totals.get(&Outcomes::key(model, &version.to_string(), Some(&tag))).copied().unwrap_or_default()
    };
    Ok((arm(Arm::Production, rollout.production), arm(Arm::Candidate, rollout.candidate)))
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// `95s`, `12m05s`, `3h20m`.
fn duration(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests;
