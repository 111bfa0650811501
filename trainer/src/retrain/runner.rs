//! Running cycles: once (`adrank retrain`) or as a loop (`adrank retrain --loop`) that starts a
//! cycle when its triggers say so, resumes an unfinished one first, retries a failing one and,
//! holding the lease, is the only loop running cycles for its model.

use std::{future::Future, time::Duration};

use adrank_contracts::{events::now_ms, spec::FeatureSpec};
use adrank_registry::{LeaseRecord, OrtConfig, Registry};

use super::{
    RetrainConfig,
    cycle::{CycleOutcome, CycleRequest, Launch, fail_cycle, run_cycle},
    lease::LeaseGuard,
    records::{self, Cycle},
    windows::final_hours,
};
use crate::{Error, Result, TrainingConfig};

const HOUR_MS: i64 = 3_600_000;

/// What the retraining loop works with.
#[derive(Debug, Clone)]
pub struct Retrainer {
    pub registry: Registry,
    /// The training log's location.
    pub log: String,
    pub spec: FeatureSpec,
    pub training: TrainingConfig,
    pub ort: OrtConfig,
    pub retrain: RetrainConfig,
    /// Point `production` at a blessed candidate instead of `candidate`.
    pub promote: bool,
    /// This process's name as a lease holder.
    pub holder: String,
    /// How to start distributed training (`retrain.ranks` > 1).
    pub launch: Launch,
}

/// What a loop did before it stopped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoopSummary {
    pub cycles: u32,
    pub failed_attempts: u32,
}

impl Retrainer {
    /// Runs one cycle (or finishes the unfinished one), failing at once if another process holds
    /// the lease.
    pub async fn once(&self) -> Result<CycleOutcome> {
        let guard = self.take_lease(None).await?;
        let request = self.request(&guard);
        let outcome = run_cycle(&request).await;
        release(guard).await;
        outcome
    }

    /// Runs cycles whenever the triggers say so until `shutdown` completes (or `max_cycles`
    /// have ended). Waits for the lease while another loop holds it, calling `waiting`.
    pub async fn run_loop(
        &self,
        max_cycles: Option<u32>,
        waiting: &mut (dyn FnMut(&LeaseRecord) + Send),
        shutdown: impl Future<Output = ()>,
    ) -> Result<LoopSummary> {
        let mut shutdown = std::pin::pin!(shutdown);
        let guard = tokio::select! {
            guard = self.take_lease(Some(waiting)) => guard?,
            () = &mut shutdown => return Ok(LoopSummary::default()),
        };
        let result = self.cycles(&guard, max_cycles, &mut shutdown).await;
        release(guard).await;
        result
    }

    async fn cycles(
        &self,
        guard: &LeaseGuard,
        max_cycles: Option<u32>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<LoopSummary> {
        let mut summary = LoopSummary::default();
        let (mut attempts, mut last_wait) = (0u32, String::new());
        let poll = Duration::from_secs(self.retrain.poll_secs);
        while max_cycles.is_none_or(|max| summary.cycles < max) {
            let due = self.due().await;
            let wait = match due {
                Ok(None) => {
                    let request = self.request(guard);
                    let result = tokio::select! {
                        result = run_cycle(&request) => result,
                        () = &mut *shutdown => return Ok(summary),
                    };
                    match result {
                        Ok(CycleOutcome::Finished(cycle)) => {
                            summary.cycles += 1;
                            attempts = 0;
                            tracing::info!(cycle = cycle.id, status = %cycle.status(), "retraining cycle ended");
                            continue;
                        }
                        Ok(CycleOutcome::NotEnoughData(reason)) => reason,
                        Err(e @ Error::LeaseLost(_)) => return Err(e),
                        Err(e) => {
                            attempts += 1;
                            summary.failed_attempts += 1;
                            crate::metrics::attempt_failed();
                            tracing::warn!(attempt = attempts, error = %e, "a retraining cycle failed; it resumes from its last step");
                            if attempts >= self.retrain.max_attempts {
                                let who = (self.retrain.model.as_str(), self.holder.as_str());
                                if let Some(id) = fail_cycle(&self.registry, who, guard, &e.to_string()).await? {
                                    tracing::error!(cycle = id, attempts, error = %e, "retraining cycle failed for good");
                                    summary.cycles += 1;
                                }
                                attempts = 0;
                            }
                            format!("retrying after: {e}")
                        }
                    }
                }
                Ok(Some(reason)) => reason,
                Err(e) => format!("cannot check the triggers: {e}"),
            };
            if wait != last_wait {
                tracing::info!(reason = %wait, "retraining loop waiting");
                last_wait = wait;
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = &mut *shutdown => return Ok(summary),
            }
        }
        Ok(summary)
    }

    /// `None` when a cycle should run now, else why not.
    async fn due(&self) -> Result<Option<String>> {
        let newest = records::newest(&self.registry, &self.retrain.model).await?;
        let Some(last) = newest.filter(Cycle::is_done) else { return Ok(None) };
        let hours = final_hours(&self.log).await?;
        let trained_until = last.plan().map_or(i64::MIN, |(plan, _)| plan.eval.1);
        let new_hours = hours.map_or(0, |h| (h.until_ms - trained_until).max(0) / HOUR_MS);
        if new_hours == 0 {
            return Ok(Some(format!("no final hours past cycle {}'s evaluation window", last.id)));
        }
        let r = &self.retrain;
        let by_data = r.min_new_hours > 0 && new_hours >= i64::from(r.min_new_hours);
        let since_last = now_ms() - last.finished_at_ms().unwrap_or(0);
        let by_schedule = r.every_secs > 0 && since_last >= (r.every_secs as i64).saturating_mul(1000);
        if by_data || by_schedule {
            Ok(None)
        } else {
            Ok(Some(format!(
                "{new_hours} new final hours (a cycle starts at {}{})",
                r.min_new_hours,
                if r.every_secs > 0 { format!(", or {} s after the last one", r.every_secs) } else { String::new() }
            )))
        }
    }

    async fn take_lease(&self, waiting: Option<&mut (dyn FnMut(&LeaseRecord) + Send)>) -> Result<LeaseGuard> {
        let ttl = Duration::from_secs(self.retrain.lease_secs);
        let guard = LeaseGuard::take(&self.registry, &self.retrain.model, &self.holder, ttl, waiting).await?;
        crate::metrics::lease_held(true);
        Ok(guard)
    }

    fn request<'a>(&'a self, lease: &'a LeaseGuard) -> CycleRequest<'a> {
        CycleRequest {
            registry: &self.registry,
            log: &self.log,
            spec: &self.spec,
            training: &self.training,
            ort: &self.ort,
            retrain: &self.retrain,
            promote: self.promote,
            lease,
            by: &self.holder,
            launch: &self.launch,
        }
    }
}

/// Lets the lease go; a failure only delays the next holder (until expiry), so it is logged, not
/// returned in place of the cycle's own result.
async fn release(guard: LeaseGuard) {
    if let Err(e) = guard.release().await {
        tracing::warn!(error = %e, "could not release the retraining lease; it expires on its own");
    }
    crate::metrics::lease_held(false);
}
