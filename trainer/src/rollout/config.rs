//! The `[rollout]` config section: how the controller judges a rollout's arms and how long it
//! gives each step.

use adrank_contracts::ConfigProblem;
use serde::{Deserialize, Serialize};

/// How the rollout controller decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Seconds between looks at the figures. A failed check rolls back within one interval.
    pub analysis_interval_secs: u64,
    /// Each arm needs this many impressions with closed attribution windows, and this many
    /// clicks, before any verdict: below them the analysis is inconclusive, never a pass or a
    /// failure.
    pub min_impressions: u64,
    pub min_clicks: u64,
    /// The least time at a step before the controller advances, in seconds, however good the
    /// figures: the errors and latency of a larger share show only after a while.
    pub min_step_secs: u64,
    /// Inconclusive this long at one step (too little traffic to decide), the controller pauses
    /// the rollout and says so, rather than pass or fail on thin data.
    pub max_step_secs: u64,
    /// The chance, over every look of a rollout, that a check fails a candidate that is not
    /// worse (or passes one that is): the test's confidence sequence holds at any number of looks.
    pub alpha: f64,
    /// The relative CTR loss against production that is tolerated: the candidate passes once
    /// its CTR is shown above `(1 - margin)` x production's, and fails once shown below it.
    pub ctr_margin: f64,
    /// The relative effect the test is most sensitive to (the width of the mixture over
    /// effects, as a share of production's CTR).
    pub effect: f64,
    /// The candidate's predicted over observed clicks must not be shown outside this band.
    pub calibration_min: f64,
    pub calibration_max: f64,
    /// The serving replicas' `/metrics` addresses (`http://host:port/metrics`), read at every
    /// look for each arm's errors and answer times. Empty: errors and latency are not judged,
    /// and every look says so.
    pub serving_metrics: Vec<String>,
    /// Requests each arm needs (the candidate's at its step, production's over the rollout)
    /// before a step may pass on its errors and latency.
    pub min_requests: u64,
    /// The share of requests failing with a 5xx tolerated beyond production's: the candidate
    /// fails once shown above it.
    pub error_margin: f64,
    /// The candidate fails once its p99 answer time is shown above production's p99 times
    /// `latency_ratio`, or plus `latency_slack_ms` when that is more.
    pub latency_ratio: f64,
    pub latency_slack_ms: f64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            analysis_interval_secs: 60,
            min_impressions: 2_000,
            min_clicks: 50,
            min_step_secs: 600,
            max_step_secs: 6 * 3600,
            alpha: 0.05,
            ctr_margin: 0.03,
            effect: 0.1,
            calibration_min: 0.8,
            calibration_max: 1.25,
            // The local `adrank serve` at `serving.listen`'s default.
            serving_metrics: vec!["http://127.0.0.1:8080/metrics".into()],
            min_requests: 500,
            error_margin: 0.005,
            latency_ratio: 1.5,
            latency_slack_ms: 5.0,
        }
    }
}

impl RolloutConfig {
    /// The section's problems, each naming its key.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push(ConfigProblem::new(key, message));
        if self.analysis_interval_secs == 0 {
            problem("analysis_interval_secs", "is 0; expected at least 1 second".into());
        }
        if self.max_step_secs < self.min_step_secs {
            problem(
                "max_step_secs",
                format!("is {}, below min_step_secs ({})", self.max_step_secs, self.min_step_secs),
            );
        }
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            problem("alpha", format!("is {}; expected a probability in (0, 0.5)", self.alpha));
        }
        if !(0.0..1.0).contains(&self.ctr_margin) {
            problem("ctr_margin", format!("is {}; expected a share in [0, 1)", self.ctr_margin));
        }
        if !(self.effect > 0.0 && self.effect.is_finite()) {
            problem("effect", format!("is {}; expected a positive share", self.effect));
        }
        if !(self.calibration_min > 0.0 && self.calibration_min < self.calibration_max) {
            problem(
                "calibration_min",
                format!(
                    "is {} with calibration_max {}; expected 0 < min < max",
                    self.calibration_min, self.calibration_max
                ),
            );
        }
        for address in &self.serving_metrics {
            if let Err(e) = super::replicas::Endpoint::parse(address) {
                problem("serving_metrics", e);
            }
        }
        if !(0.0..1.0).contains(&self.error_margin) {
            problem("error_margin", format!("is {}; expected a share in [0, 1)", self.error_margin));
        }
        if !(self.latency_ratio >= 1.0 && self.latency_ratio.is_finite()) {
            problem("latency_ratio", format!("is {}; expected at least 1", self.latency_ratio));
        }
        if !(self.latency_slack_ms >= 0.0 && self.latency_slack_ms.is_finite()) {
            problem("latency_slack_ms", format!("is {}; expected milliseconds, 0 or more", self.latency_slack_ms));
        }
        problems
    }
}
