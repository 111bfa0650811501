//! The `[world]` config section: the synthetic ads world's size and its truth.

use adrank_contracts::ConfigProblem;
use serde::{Deserialize, Serialize};

/// The synthetic world. Same config and seed, same events, byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldConfig {
    /// Seed of every random draw.
    pub seed: u64,
    /// Users; their activity is Zipf-distributed (a few users make many requests).
    pub users: u32,
    /// Zipf exponent of user activity.
    pub zipf_exponent: f64,
    /// Advertisers.
    pub advertisers: u32,
    /// Live ads at any time. Ads arrive and retire continuously, so some are always new.
    pub ads: u32,
    /// Mean ad lifetime in days (exponential).
    pub ad_lifetime_days: f64,
    /// Ad categories and formats; user segments, devices and countries.
    pub categories: u32,
    pub formats: u32,
    pub segments: u32,
    pub devices: u32,
    pub countries: u32,
    /// Surfaces requests come from.
    pub surfaces: Vec<String>,
    /// Dimension of the latent user and ad vectors.
    pub latent_dim: u32,
    /// The share of a user's latent vector and bias (of their variance) that is its own; the
    /// rest is the sum of components shared by its segment, country and device. 1 is the world
    /// before shared taste (every user's taste its own).
    pub user_individual_share: f64,
    /// The same for an ad's latent vector and bias, shared by its category, advertiser and
    /// format.
    pub ad_individual_share: f64,
    /// The mean click-through rate of shown ads under the baseline policy (rank by bid); the
    /// global bias is calibrated to it.
    pub mean_ctr: f64,
    /// Position bias: the logit of a click drops by `position_decay * ln(1 + position)`.
    pub position_decay: f64,
    /// Candidates per request, and the fraction drawn from the user's favourite categories (the
    /// rest are random live ads).
    pub candidates: u32,
    pub relevant_fraction: f64,
    /// Slots shown per response (the top of the ranking).
    pub shown_slots: u32,
    /// Requests per simulated hour: sets how fast simulated time passes.
    pub requests_per_hour: u32,
    /// Daily random-walk steps (standard deviations) of latent vector components and of the
    /// segment x category affinities: a model trained on old data decays.
    pub vector_drift_per_day: f64,
    pub affinity_drift_per_day: f64,
    /// Log-normal bids: the mean and deviation of ln(bid).
    pub bid_log_mean: f64,
    pub bid_log_std: f64,
    /// Simulated start time, milliseconds since the Unix epoch.
    pub start_time_ms: i64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            users: 100_000,
            zipf_exponent: 1.05,
            advertisers: 2_000,
            ads: 20_000,
            ad_lifetime_days: 7.0,
            categories: 32,
            formats: 4,
            segments: 16,
            devices: 3,
            countries: 20,
            surfaces: vec!["feed".into(), "search".into(), "sidebar".into()],
            latent_dim: 8,
            user_individual_share: 0.2,
            ad_individual_share: 0.3,
            mean_ctr: 0.02,
            position_decay: 0.7,
            candidates: 200,
            relevant_fraction: 0.5,
            shown_slots: 5,
            requests_per_hour: 2_000,
            vector_drift_per_day: 0.08,
            affinity_drift_per_day: 0.15,
            bid_log_mean: 0.0,
            bid_log_std: 0.6,
            // 2026-01-01T00:00:00Z
            start_time_ms: 1_767_225_600_000,
        }
    }
}

impl WorldConfig {
    /// Every problem in this section; empty when it is usable.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut at_least = |key: &str, value: u32, min: u32| {
            if value < min {
                problems.push(ConfigProblem::new(key, format!("is {value}; expected at least {min}")));
            }
        };
        at_least("users", self.users, 1);
        at_least("advertisers", self.advertisers, 1);
        at_least("ads", self.ads, 1);
        at_least("categories", self.categories, 1);
        at_least("formats", self.formats, 1);
        at_least("segments", self.segments, 1);
        at_least("devices", self.devices, 1);
        at_least("countries", self.countries, 1);
        at_least("latent_dim", self.latent_dim, 1);
        at_least("candidates", self.candidates, 1);
        at_least("shown_slots", self.shown_slots, 1);
        at_least("requests_per_hour", self.requests_per_hour, 1);
        if self.shown_slots > self.candidates {
            problems.push(ConfigProblem::new("shown_slots", "is more than candidates"));
        }
        if !(self.mean_ctr > 0.0 && self.mean_ctr < 0.5) {
            problems.push(ConfigProblem::new("mean_ctr", format!("is {}; expected between 0 and 0.5", self.mean_ctr)));
        }
        for (key, value) in [
            ("relevant_fraction", self.relevant_fraction),
            ("user_individual_share", self.user_individual_share),
            ("ad_individual_share", self.ad_individual_share),
        ] {
            if !(0.0..=1.0).contains(&value) {
                problems.push(ConfigProblem::new(key, format!("is {value}; expected a fraction in [0, 1]")));
            }
        }
        for (key, value) in [
            ("zipf_exponent", self.zipf_exponent),
            ("ad_lifetime_days", self.ad_lifetime_days),
            ("bid_log_std", self.bid_log_std),
        ] {
            if !(value.is_finite() && value > 0.0) {
                problems.push(ConfigProblem::new(key, format!("is {value}; expected a positive number")));
            }
        }
        for (key, value) in [
            ("position_decay", self.position_decay),
            ("vector_drift_per_day", self.vector_drift_per_day),
            ("affinity_drift_per_day", self.affinity_drift_per_day),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                problems.push(ConfigProblem::new(key, format!("is {value}; expected a number >= 0")));
            }
        }
        let max_vector_step = super::Truth::max_vector_step(self.latent_dim);
        if self.vector_drift_per_day >= max_vector_step {
            problems.push(ConfigProblem::new(
                "vector_drift_per_day",
                format!(
                    "is {}; expected less than {max_vector_step:.3}, the deviation of a latent component",
                    self.vector_drift_per_day
                ),
            ));
        }
        if self.affinity_drift_per_day >= super::truth::AFFINITY_STD {
            problems.push(ConfigProblem::new(
                "affinity_drift_per_day",
                format!(
                    "is {}; expected less than {}, the deviation of an affinity",
                    self.affinity_drift_per_day,
                    super::truth::AFFINITY_STD
                ),
            ));
        }
        if self.surfaces.is_empty() || self.surfaces.iter().any(|s| s.trim().is_empty()) {
            problems.push(ConfigProblem::new("surfaces", "expected at least one non-empty name"));
        }
        problems
    }
}
