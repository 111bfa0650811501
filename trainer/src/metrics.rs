//! Every metric the retraining loop emits, named once (Prometheus names, units in the name).
//!
//! Nothing is recorded until the binary installs a recorder (`adrank retrain --metrics-listen`).

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub const STEP_SECONDS: &str = "adrank_retrain_step_duration_seconds";
pub const CYCLES: &str = "adrank_retrain_cycles_total";
pub const CYCLE_FAILURES: &str = "adrank_retrain_cycle_failures_total";
pub const LAST_CYCLE: &str = "adrank_retrain_last_cycle_timestamp_seconds";
pub const LEASE_HELD: &str = "adrank_retrain_lease_held";

/// Registers every metric's help text.
pub fn describe() {
    describe_histogram!(STEP_SECONDS, "Duration of one retraining step, by step.");
    describe_counter!(CYCLES, "Retraining cycles ended, by decision (blessed, refused, inconclusive, failed).");
    describe_counter!(CYCLE_FAILURES, "Failed attempts at a retraining cycle (each resumes from its last step).");
    describe_gauge!(LAST_CYCLE, "When the last retraining cycle ended, seconds since the Unix epoch.");
    describe_gauge!(LEASE_HELD, "1 while this process holds the retraining lease.");
}

pub(crate) fn step_done(step: &'static str, seconds: f64) {
    histogram!(STEP_SECONDS, "step" => step).record(seconds);
}

pub(crate) fn cycle_done(decision: &str) {
    counter!(CYCLES, "decision" => decision.to_string()).increment(1);
    gauge!(LAST_CYCLE).set(adrank_contracts::events::now_ms() as f64 / 1e3);
}

pub(crate) fn attempt_failed() {
    counter!(CYCLE_FAILURES).increment(1);
}

pub(crate) fn lease_held(held: bool) {
    gauge!(LEASE_HELD).set(if held { 1.0 } else { 0.0 });
}
