//! Every metric the rollout controller emits (`adrank rollout control --metrics-listen`), named
//! once: where the model's rollout stands, what each look found, and the arms' figures the last
//! verdict rested on.

use adrank_registry::{Action, Rollout, rollout::Status};
use metrics::{counter, describe_counter, describe_gauge, gauge};

use super::controller::Judged;

pub const STATUS: &str = "adrank_rollout_status";
pub const WEIGHT: &str = "adrank_rollout_candidate_weight_percent";
pub const STEP_AGE: &str = "adrank_rollout_step_age_seconds";
pub const LOOKS: &str = "adrank_rollout_looks_total";
pub const LAST_LOOK: &str = "adrank_rollout_last_look_timestamp_seconds";
pub const DECISIONS: &str = "adrank_rollout_decisions_total";
pub const ARM_IMPRESSIONS: &str = "adrank_rollout_arm_impressions";
pub const ARM_CTR: &str = "adrank_rollout_arm_ctr_ratio";
pub const ARM_CALIBRATION: &str = "adrank_rollout_arm_calibration_ratio";
pub const ARM_REQUESTS: &str = "adrank_rollout_arm_requests";
pub const ARM_ERRORS: &str = "adrank_rollout_arm_error_ratio";
pub const ARM_P99: &str = "adrank_rollout_arm_p99_seconds";

const STATUSES: [Status; 4] = [Status::Running, Status::Paused, Status::Promoted, Status::RolledBack];

/// Registers every metric's help text.
pub fn describe() {
    describe_gauge!(
        STATUS,
        "1 for the status the model's newest rollout is in (running, paused, promoted, rolled back), 0 for the others."
    );
    describe_gauge!(WEIGHT, "The candidate's share of users at the rollout's step, in percent (0: shadow or ended).");
    describe_gauge!(STEP_AGE, "How long the rollout has been at its step, in seconds.");
    describe_counter!(LOOKS, "Looks at a running rollout, by verdict (passed, failed, inconclusive).");
    describe_gauge!(LAST_LOOK, "When the controller last looked, seconds since the Unix epoch.");
    describe_counter!(DECISIONS, "Decisions the controller made, by action (advance, pause, promote, roll_back).");
    describe_gauge!(ARM_IMPRESSIONS, "Impressions with closed attribution windows per arm, over the rollout.");
    describe_gauge!(ARM_CTR, "Clicked share of each arm's impressions, over the rollout.");
    describe_gauge!(ARM_CALIBRATION, "Each arm's predicted over observed clicks, over the rollout.");
    describe_gauge!(
        ARM_REQUESTS,
        "Requests each arm answered (the candidate's at its step), summed over the replicas."
    );
    describe_gauge!(ARM_ERRORS, "Share of each arm's requests answered with a 5xx.");
    describe_gauge!(ARM_P99, "Each arm's 99th percentile answer time of successful requests, in seconds.");
}

/// Where the model's newest rollout stands, at `now_ms`.
pub(crate) fn standing(model: &str, rollout: &Rollout, now_ms: i64) {
    for status in STATUSES {
        let value = if status == rollout.status { 1.0 } else { 0.0 };
        gauge!(STATUS, "model" => model.to_string(), "status" => status.as_str().replace(' ', "_")).set(value);
    }
    gauge!(WEIGHT, "model" => model.to_string()).set(f64::from(if rollout.is_shadow() { 0 } else { rollout.weight() }));
    let age = if rollout.is_active() { (now_ms - rollout.step_started_ms).max(0) as f64 / 1e3 } else { 0.0 };
    gauge!(STEP_AGE, "model" => model.to_string()).set(age);
}

/// What one look at a running rollout found.
pub(crate) fn looked(model: &str, judged: &Judged) {
    let verdict = judged.analysis.verdict;
    counter!(LOOKS, "model" => model.to_string(), "verdict" => verdict.as_str()).increment(1);
    gauge!(LAST_LOOK, "model" => model.to_string()).set(adrank_contracts::events::now_ms() as f64 / 1e3);
    let (production, candidate) = &judged.outcomes;
    for (arm, outcomes) in [("production", production), ("candidate", candidate)] {
        let labels = [("model", model.to_string()), ("arm", arm.to_string())];
        gauge!(ARM_IMPRESSIONS, &labels).set(outcomes.impressions as f64);
        if outcomes.impressions > 0 {
            gauge!(ARM_CTR, &labels).set(outcomes.clicked as f64 / outcomes.impressions as f64);
        }
        if outcomes.clicked > 0 {
            gauge!(ARM_CALIBRATION, &labels).set(outcomes.predicted() / outcomes.clicked as f64);
        }
    }
    if let Some((production, candidate)) = &judged.requests {
        for (arm, requests) in [("production", production), ("candidate", candidate)] {
            let labels = [("model", model.to_string()), ("arm", arm.to_string())];
            gauge!(ARM_REQUESTS, &labels).set(requests.requests as f64);
            if requests.requests > 0 {
                gauge!(ARM_ERRORS, &labels).set(requests.errors as f64 / requests.requests as f64);
            }
            if let Some(p99) = requests.quantile(0.99) {
                gauge!(ARM_P99, &labels).set(p99);
            }
        }
    }
}

/// A decision that landed.
pub(crate) fn decided(model: &str, action: Action) {
    counter!(DECISIONS, "model" => model.to_string(), "action" => action.as_str()).increment(1);
}
