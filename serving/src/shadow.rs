//! Shadow scoring: at a rollout's shadow step the candidate also scores a sample of
//! production's requests, after the reply has gone.
//!
//! Bounded and droppable: a request is sampled (`serving.shadow_sample`), and its copy scored
//! only while fewer than `serving.shadow_max_in_flight` copies are being scored; otherwise it is
//! dropped and counted, never queued. The candidate's scores are compared with production's
//! (the population stability index of their distributions, top-k agreement, the candidate's
//! latency) and ride with the logged impressions (`shadow_score`), so the ingester counts the
//! candidate's calibration on production's traffic.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use adrank_contracts::{
    events::{Impression, RawFeatures},
    request::RankRequest,
    spec::POSITION_FIELD,
};
use adrank_featurestore::online::Fetched;

use crate::{impressions::ImpressionLog, model::LoadedVersion};

/// Score bins for the population stability index: CTR-like scores sit low, so the bins are
/// finer there.
const BINS: [f64; 10] = [0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.35, f64::INFINITY];

/// Decides which requests are copied, and keeps the comparison's figures.
#[derive(Debug)]
pub struct Gate {
    /// Every how many'th request is sampled (0: none).
    every: u64,
    seen: AtomicU64,
    max_in_flight: usize,
    in_flight: Arc<AtomicUsize>,
    deadline: Duration,
    stats: Mutex<Stats>,
}

/// The comparison so far, for one rollout.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    pub rollout: u64,
    pub production: [u64; BINS.len()],
    pub candidate: [u64; BINS.len()],
    /// The sum over compared requests of the share of production's shown slots the candidate
    /// would also have shown, and how many requests were compared.
    pub agreement_sum: f64,
    pub compared: u64,
}

impl Stats {
    /// The population stability index of the candidate's scores against production's:
    /// `sum (c - p) ln(c / p)` over the bins' shares (under 0.1 is usually read as stable).
    pub fn psi(&self) -> f64 {
        let (p_total, c_total) = (self.production.iter().sum::<u64>(), self.candidate.iter().sum::<u64>());
        if p_total == 0 || c_total == 0 {
            return 0.0;
        }
        // Half a count in an empty bin keeps the logarithm finite.
        let share = |n: u64, total: u64| (n as f64).max(0.5) / total as f64;
        self.production
            .iter()
            .zip(&self.candidate)
            .map(|(&p, &c)| {
                let (p, c) = (share(p, p_total), share(c, c_total));
                (c - p) * (c / p).ln()
            })
            .sum()
    }

    /// The mean top-k agreement, `None` before any comparison.
    pub fn agreement(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.agreement_sum / self.compared as f64)
    }
}

fn bin(score: f32) -> usize {
    BINS.iter().position(|&edge| f64::from(score) < edge).unwrap_or(BINS.len() - 1)
}

/// A sampled request's place among the copies being scored; released when dropped.
#[derive(Debug)]
pub struct Permit {
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Gate {
    /// A gate copying `sample` of the requests (0 to 1), at most `max_in_flight` at once.
    pub fn new(sample: f64, max_in_flight: usize, deadline: Duration) -> Self {
        let every = if sample > 0.0 { (1.0 / sample.min(1.0)).round().max(1.0) as u64 } else { 0 };
        Self {
            every,
            seen: AtomicU64::new(0),
            max_in_flight,
            in_flight: Arc::new(AtomicUsize::new(0)),
            deadline,
            stats: Mutex::new(Stats::default()),
        }
    }

    /// Whether this request is copied: sampled, and a place free (else dropped and counted).
    pub fn admit(&self) -> Option<Permit> {
        if self.every == 0 || !self.seen.fetch_add(1, Relaxed).is_multiple_of(self.every) {
            return None;
        }
        if self.in_flight.fetch_add(1, Relaxed) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Relaxed);
            crate::metrics::shadow("dropped");
            return None;
        }
        Some(Permit { in_flight: Arc::clone(&self.in_flight) })
    }

    /// Waits until no copy is being scored (their impressions are then in the log), at most
    /// `timeout`; whether none is.
    pub async fn idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.in_flight.load(Relaxed) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// The comparison of rollout `rollout` so far.
    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, rollout: u64, production: &[f32], candidate: &[f32], agreement: f64) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if stats.rollout != rollout {
            *stats = Stats { rollout, ..Stats::default() };
        }
        for &score in production {
            stats.production[bin(score)] += 1;
        }
        for &score in candidate {
            stats.candidate[bin(score)] += 1;
        }
        stats.agreement_sum += agreement;
        stats.compared += 1;
        crate::metrics::shadow_comparison(stats.psi(), stats.agreement().unwrap_or(1.0));
    }
}

/// A request to be scored again by the candidate, with what the reply was made of.
#[derive(Debug)]
pub struct Job {
    pub permit: Permit,
    pub candidate: Arc<LoadedVersion>,
    pub rollout: u64,
    pub request: RankRequest,
    pub fetched: Fetched,
    pub context: RawFeatures,
    /// Production's scores, one per candidate, and the candidates it showed (their indices).
    pub scores: Vec<f32>,
    pub shown: Vec<usize>,
    /// The impressions of the shown slots, logged once the candidate has scored them (or failed
    /// to).
    pub impressions: Vec<Impression>,
}

impl Job {
    /// Scores the copy, records the comparison, and logs the impressions with the candidate's
    /// scores.
    pub async fn run(mut self, gate: &Gate, log: Option<&ImpressionLog>) {
        // Every candidate at the top slot (to rank as production did), then production's shown
        // slots below the top at their positions (the impressions' scores), in one run.
        let n = self.request.candidates.len();
        let positioned = self.candidate.transformer.inputs().iter().any(|i| i == POSITION_FIELD);
        let below_top: &[usize] = if positioned { self.shown.get(1..).unwrap_or_default() } else { &[] };
        let which = (0..n).map(|i| (i, 0)).chain(below_top.iter().zip(1..).map(|(&i, slot)| (i, slot)));
        let parts = (&self.request, &self.fetched, &self.context);
        let rows = self.candidate.encoder.slot_rows(parts, which);
        let started = Instant::now();
        match self.candidate.batcher.score(rows, started + gate.deadline).await {
            Ok(mut scored) => {
                let at_slot = scored.scores.split_off(n);
                crate::metrics::shadow("scored");
                crate::metrics::shadow_seconds(started.elapsed().as_secs_f64());
                let value = |scores: &[f32], i: usize| f64::from(scores[i]) * self.request.candidates[i].bid;
                let mut order: Vec<usize> = (0..scored.scores.len()).collect();
                order.sort_by(|&a, &b| value(&scored.scores, b).total_cmp(&value(&scored.scores, a)).then(a.cmp(&b)));
                let k = self.shown.len();
                let agreed = self.shown.iter().filter(|i| order[..k].contains(i)).count();
                let agreement = if k == 0 { 1.0 } else { agreed as f64 / k as f64 };
                gate.record(self.rollout, &self.scores, &scored.scores, agreement);
                for (position, (impression, &i)) in self.impressions.iter_mut().zip(&self.shown).enumerate() {
                    let score = match position.checked_sub(1) {
                        Some(below) if positioned => at_slot[below],
                        _ => scored.scores[i],
                    };
                    impression.shadow_score = Some(f64::from(score));
                }
            }
            Err(e) => {
                crate::metrics::shadow("failed");
                tracing::debug!(error = %e, "the shadow copy was not scored");
            }
        }
        // The permit goes after the log has the impressions: a shutdown waits for it.
        if let Some(log) = log {
            log.log(self.impressions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_samples_every_nth_request_and_drops_beyond_its_places() {
        let gate = Gate::new(0.25, 2, Duration::from_millis(100));
        let admitted: Vec<Option<Permit>> = (0..12).map(|_| gate.admit()).collect();
        // Requests 0, 4 and 8 are sampled; the third finds both places taken.
        let kept: Vec<usize> = admitted.iter().enumerate().filter(|(_, p)| p.is_some()).map(|(i, _)| i).collect();
        assert_eq!(kept, [0, 4]);
        drop(admitted);
        assert_eq!(gate.in_flight.load(Relaxed), 0, "places come back when permits drop");
        assert!(Gate::new(0.0, 2, Duration::ZERO).admit().is_none());
    }

    #[test]
    fn psi_is_zero_for_one_distribution_and_grows_as_they_part() {
        let gate = Gate::new(1.0, 1, Duration::ZERO);
        let scores: Vec<f32> = (0..1000).map(|i| i as f32 / 4000.0).collect();
        gate.record(1, &scores, &scores, 1.0);
        assert!(gate.stats().psi().abs() < 1e-12);
        let shifted: Vec<f32> = scores.iter().map(|s| s * 3.0).collect();
        gate.record(1, &scores, &shifted, 0.5);
        let psi = gate.stats().psi();
        assert!(psi > 0.1, "{psi}");
        assert_eq!(gate.stats().agreement(), Some(0.75));
        // A new rollout starts afresh.
        gate.record(2, &scores, &scores, 1.0);
        assert_eq!(gate.stats().compared, 1);
    }
}
