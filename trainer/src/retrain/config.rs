//! The `[retrain]` config section: what the loop trains, on which hours, when, and the gates a
//! candidate must pass.

use adrank_contracts::ConfigProblem;
use serde::{Deserialize, Serialize};

/// How the retraining loop runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainConfig {
    /// The model name the loop trains, evaluates and promotes.
    pub model: String,
    /// Final hours a candidate trains on: the newest ones before the evaluation window. More
    /// hours see more users and ads; fewer follow a drifting world faster.
    pub train_hours: u32,
    /// The newest final hours, never trained on, on which the candidate and production are
    /// compared. More hours make the verdict surer and the data a candidate learns from older.
    pub eval_hours: u32,
    /// `--loop`: start a cycle at least this often, in seconds (0: only when new hours exist).
    pub every_secs: u64,
    /// `--loop`: start a cycle once this many final hours exist past the last cycle's
    /// evaluation window (0: only on the schedule).
    pub min_new_hours: u32,
    /// `--loop`: how often the triggers are checked, in seconds.
    pub poll_secs: u64,
    /// The lease that keeps one cycle at a time, in seconds: a killed holder is taken over after
    /// this long. It is renewed every third of it, so it must be far above the clock skew
    /// between machines.
    pub lease_secs: u64,
    /// Ranks the candidate trains on. 1 trains inside the loop's process (threads); more start
    /// `adrank train --distributed` through `[training] mpi_launcher` with `-np <ranks>` (on
    /// Kubernetes, a launcher that submits an MPIJob and waits for it).
    pub ranks: u32,
    /// Attempts at a failing cycle (each resumes from its last completed step) before it is
    /// recorded as failed and the loop waits for the next trigger.
    pub max_attempts: u32,
    /// When a cycle blesses a candidate (without `--promote`), start a rollout of it against
    /// production with `rollout_plan` (docs/rollouts.md), unless one is under way: serving
    /// then routes users to it step by step.
    pub rollout: bool,
    /// The plan of those rollouts: the candidate's share of users per step, in percent, rising
    /// to 100 (0 first: shadow).
    pub rollout_plan: Vec<u8>,
    /// What a candidate must show before it is blessed.
    pub gates: GatesConfig,
}

impl Default for RetrainConfig {
    fn default() -> Self {
        Self {
            model: "ctr".into(),
            train_hours: 48,
            eval_hours: 6,
            every_secs: 6 * 3600,
            min_new_hours: 6,
            poll_secs: 30,
            lease_secs: 60,
            ranks: 1,
            max_attempts: 3,
            rollout: false,
            rollout_plan: adrank_registry::rollout::DEFAULT_PLAN.to_vec(),
            gates: GatesConfig::default(),
        }
    }
}

/// Promotion gates, in the manner of TFX's Evaluator: value thresholds on the candidate alone,
/// change thresholds against production, and a minimum of evidence below which the verdict is
/// "inconclusive", never a pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatesConfig {
    /// The candidate's AUC on the evaluation window must reach this.
    pub min_auc: f64,
    /// Its normalised entropy must stay at or below this (1: no better than the click rate).
    pub max_normalised_entropy: f64,
    /// Predicted over observed clicks must lie in this band.
    pub calibration_min: f64,
    pub calibration_max: f64,
    /// Against production: `1 - candidate NE / production NE` must reach this (0: not worse;
    /// 0.005: at least 0.5% better; negative values tolerate a small loss).
    pub min_ne_improvement: f64,
    /// Against production, per slice with enough examples: the candidate's NE may be at most
    /// this fraction worse than production's (0.02: 2%).
    pub max_slice_regression: f64,
    /// A slice is judged only with at least this many examples.
    pub min_slice_examples: u64,
    /// Fewer evaluation examples or clicks than this: inconclusive.
    pub min_examples: u64,
    pub min_clicks: u64,
}

impl Default for GatesConfig {
    fn default() -> Self {
        Self {
            min_auc: 0.6,
            max_normalised_entropy: 0.98,
            calibration_min: 0.8,
            calibration_max: 1.25,
            min_ne_improvement: 0.0,
            max_slice_regression: 0.02,
            min_slice_examples: 5_000,
            min_examples: 10_000,
            min_clicks: 200,
        }
    }
}

impl RetrainConfig {
    /// Every problem in this section; empty when it is usable.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, text: String| problems.push(ConfigProblem::new(key, text));
        let name_ok = (1..=64).contains(&self.model.len())
            && self.model.starts_with(|c: char| c.is_ascii_lowercase())
            && self.model.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !name_ok {
            problem("model", format!("{:?} is not a model name; use 1 to 64 of a-z, 0-9, _ and -", self.model));
        }
        if let Err(why) = adrank_registry::rollout::check_plan(&self.rollout_plan) {
            problem("rollout_plan", why);
        }
        if self.train_hours == 0 {
            problem("train_hours", "is 0; expected at least 1".into());
        }
        if self.eval_hours == 0 {
            problem("eval_hours", "is 0; expected at least 1".into());
        }
        if self.every_secs == 0 && self.min_new_hours == 0 {
            problem("every_secs", "and min_new_hours are both 0: the loop would never start a cycle".into());
        }
        if self.poll_secs == 0 {
            problem("poll_secs", "is 0; expected at least 1".into());
        }
        if self.lease_secs < 3 {
            problem("lease_secs", format!("is {}; expected at least 3 (it is renewed every third)", self.lease_secs));
        }
        if self.ranks == 0 {
            problem("ranks", "is 0; expected at least 1".into());
        }
        if self.max_attempts == 0 {
            problem("max_attempts", "is 0; expected at least 1".into());
        }
        let g = &self.gates;
        for (key, value) in [
            ("gates.min_auc", g.min_auc),
            ("gates.max_normalised_entropy", g.max_normalised_entropy),
            ("gates.calibration_min", g.calibration_min),
            ("gates.calibration_max", g.calibration_max),
            ("gates.min_ne_improvement", g.min_ne_improvement),
            ("gates.max_slice_regression", g.max_slice_regression),
        ] {
            if !value.is_finite() {
                problem(key, format!("is {value}; expected a finite number"));
            }
        }
        if !(0.0..=1.0).contains(&g.min_auc) {
            problem("gates.min_auc", format!("is {}; expected 0 to 1", g.min_auc));
        }
        if !(g.calibration_min > 0.0 && g.calibration_min < 1.0 && g.calibration_max > 1.0) {
            problem(
                "gates.calibration_min",
                format!(
                    "and calibration_max are {} and {}; expected a band around 1 (0 < min < 1 < max)",
                    g.calibration_min, g.calibration_max
                ),
            );
        }
        if !(g.min_ne_improvement > -1.0 && g.min_ne_improvement < 1.0) {
            problem("gates.min_ne_improvement", format!("is {}; expected between -1 and 1", g.min_ne_improvement));
        }
        if g.max_slice_regression < 0.0 {
            problem("gates.max_slice_regression", format!("is {}; expected 0 or more", g.max_slice_regression));
        }
        if g.min_examples == 0 || g.min_clicks == 0 {
            problem("gates.min_examples", "and min_clicks must be at least 1: no evidence is not a pass".into());
        }
        problems
    }
}
