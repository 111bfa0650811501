//! What each model version's impressions did, counted in the commits that wrote them.
//!
//! A rollout is judged on online CTR and calibration per arm, which needs every click counted
//! against the version that scored its impression. Only the join knows both (a click event names
//! its impression, not the version), and the join's commits are exactly once: so the counts ride
//! in the commit records, summed by snapshots, and a reader adds up the records instead of
//! reading the Parquet files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Commit, Example};
use crate::events::{Impression, RolloutArm};

/// Predicted and true probabilities are summed in millionths, so that sums are exact and do not
/// depend on the order they were added in.
pub const MICROS: f64 = 1e6;

/// The impressions of one model version (in one rollout arm), their clicks and what was
/// predicted for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcomes {
    pub impressions: u64,
    /// Impressions clicked within their attribution window.
    pub clicked: u64,
    /// The sum of the scores served, in millionths: the clicks the model expected.
    pub predicted_micros: u64,
    /// Impressions that carried the world's true click probability, and its sum in millionths.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub with_truth: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub truth_micros: u64,
    /// Impressions a shadowed candidate also scored, those clicked, and the candidate's scores'
    /// sum in millionths: its calibration on production's traffic.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shadowed: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shadow_clicked: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shadow_predicted_micros: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Outcomes {
    /// The key an impression is counted under: `<model>/<version>`, and during a rollout
    /// `<model>/<version>/rollout-<id>/<arm>`.
    pub fn key(model: &str, version: &str, rollout: Option<&RolloutArm>) -> String {
        match rollout {
            None => format!("{model}/{version}"),
            Some(RolloutArm { id, arm }) => format!("{model}/{version}/rollout-{id}/{arm}"),
        }
    }

    fn of(impression: &Impression) -> String {
        Self::key(&impression.model_name, &impression.model_version, impression.rollout.as_ref())
    }

    /// Counts one example.
    pub fn add_example(&mut self, example: &Example) {
        let micros = |p: f64| (p * MICROS).round() as u64;
        self.impressions += 1;
        self.clicked += u64::from(example.label());
        self.predicted_micros += micros(example.impression.score);
        if let Some(p) = example.impression.oracle_p {
            self.with_truth += 1;
            self.truth_micros += micros(p);
        }
        if let Some(p) = example.impression.shadow_score {
            self.shadowed += 1;
            self.shadow_clicked += u64::from(example.label());
            self.shadow_predicted_micros += micros(p);
        }
    }

    /// Adds another count to this one.
    pub fn add(&mut self, other: &Outcomes) {
        self.impressions += other.impressions;
        self.clicked += other.clicked;
        self.predicted_micros += other.predicted_micros;
        self.with_truth += other.with_truth;
        self.truth_micros += other.truth_micros;
        self.shadowed += other.shadowed;
        self.shadow_clicked += other.shadow_clicked;
        self.shadow_predicted_micros += other.shadow_predicted_micros;
    }

    /// Clicks expected by the model.
    pub fn predicted(&self) -> f64 {
        self.predicted_micros as f64 / MICROS
    }

    /// The clicks the shadowed candidate expected on the impressions it scored.
    pub fn shadow_predicted(&self) -> f64 {
        self.shadow_predicted_micros as f64 / MICROS
    }

    /// The world's true click probability summed over the impressions that carried it.
    pub fn truth(&self) -> f64 {
        self.truth_micros as f64 / MICROS
    }
}

/// Counts examples by key.
pub fn count<'a>(examples: impl IntoIterator<Item = &'a Example>) -> BTreeMap<String, Outcomes> {
    let mut counts: BTreeMap<String, Outcomes> = BTreeMap::new();
    for example in examples {
        counts.entry(Outcomes::of(&example.impression)).or_default().add_example(example);
    }
    counts
}

/// Sums the counts of several commits (snapshots included) by key.
pub fn sum<'a>(commits: impl IntoIterator<Item = &'a Commit>) -> BTreeMap<String, Outcomes> {
    let mut total: BTreeMap<String, Outcomes> = BTreeMap::new();
    for commit in commits {
        for (key, outcomes) in &commit.outcomes {
            total.entry(key.clone()).or_default().add(outcomes);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::RawFeatures;

    fn example(version: &str, rollout: Option<(u64, &str)>, score: f64, clicks: u32) -> Example {
        let mut impression = Impression::example("i", RawFeatures::new());
        impression.model_version = version.into();
        impression.score = score;
        impression.oracle_p = Some(score / 2.0);
        impression.rollout = rollout.map(|(id, arm)| RolloutArm { id, arm: arm.into() });
        impression.shadow_score = (version == "1").then_some(score * 2.0);
        Example { impression, partition: 0, offset: 0, clicks, first_click_ms: None }
    }

    #[test]
    fn impressions_count_under_their_version_and_arm() {
        let examples = [
            example("1", None, 0.1, 0),
            example("1", Some((2, "production")), 0.2, 3),
            example("1", Some((2, "production")), 0.3, 0),
            example("4", Some((2, "candidate")), 0.25, 1),
        ];
        let counts = count(&examples);
        assert_eq!(
            counts.keys().collect::<Vec<_>>(),
            ["ctr/1", "ctr/1/rollout-2/production", "ctr/4/rollout-2/candidate"]
        );
        let production = counts["ctr/1/rollout-2/production"];
        // Three clicks on one impression are one clicked impression, as the label says.
        assert_eq!((production.impressions, production.clicked), (2, 1));
        assert_eq!(production.predicted_micros, 500_000);
        assert_eq!((production.with_truth, production.truth_micros), (2, 250_000));
        assert_eq!(
            (production.shadowed, production.shadow_clicked, production.shadow_predicted_micros),
            (2, 1, 1_000_000)
        );
    }

    #[test]
    fn sums_over_commits_equal_the_count_of_all_their_examples() {
        let examples: Vec<Example> =
            (0..50).map(|i| example(&(i % 3).to_string(), None, f64::from(i) / 97.0, i % 4)).collect();
        let commits: Vec<Commit> =
            examples.chunks(7).map(|chunk| Commit { outcomes: count(chunk), ..Commit::default() }).collect();
        assert_eq!(sum(&commits), count(&examples));
    }
}
