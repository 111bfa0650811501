//! Every metric serving emits, named once (Prometheus names, units in the name). Nothing is
//! recorded until the binary installs a recorder (`adrank serve` does, and serves it at
//! `/metrics`).

use std::time::Duration;

use adrank_contracts::arm_requests;
use adrank_registry::Assignment;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use metrics_util::MetricKindMask;

use crate::throttle::Throttle;

pub const REQUESTS: &str = "adrank_serving_requests_total";
pub const REQUEST_SECONDS: &str = "adrank_serving_request_seconds";
pub const STAGE_SECONDS: &str = "adrank_serving_stage_seconds";
pub const BATCH_ROWS: &str = "adrank_serving_batch_rows";
pub const QUEUE_DEPTH: &str = "adrank_serving_queue_jobs";
pub const IN_FLIGHT: &str = "adrank_serving_in_flight_requests";
pub const SHED: &str = "adrank_serving_shed_total";
pub const ADMISSION_LIMIT: &str = "adrank_serving_admission_limit";
pub const DEGRADED: &str = "adrank_serving_degraded_total";
pub const LOADED_VERSIONS: &str = "adrank_serving_loaded_versions";
pub const VERSION_CHANGES: &str = "adrank_serving_version_changes_total";
pub const IMPRESSIONS_DROPPED: &str = "adrank_serving_impressions_dropped_total";
pub const ORT_ERRORS: &str = "adrank_serving_inference_errors_total";
pub const CONNECTIONS_CLOSED: &str = "adrank_serving_connections_closed_total";
pub const ARM_SECONDS: &str = adrank_contracts::arm_requests::METRIC;
pub const SHADOW: &str = "adrank_serving_shadow_requests_total";
pub const SHOWN_RESCORED: &str = "adrank_serving_shown_rescored_total";
pub const SHADOW_SECONDS: &str = "adrank_serving_shadow_seconds";
pub const SHADOW_PSI: &str = "adrank_serving_shadow_psi";
pub const SHADOW_AGREEMENT: &str = "adrank_serving_shadow_topk_agreement";
pub const GPU_MEMORY_USED: &str = "adrank_serving_gpu_memory_used_bytes";
pub const GPU_MEMORY_TOTAL: &str = "adrank_serving_gpu_memory_total_bytes";

/// Registers every metric's help text.
pub fn describe() {
    describe_counter!(REQUESTS, "HTTP requests, by route and status code.");
    describe_histogram!(REQUEST_SECONDS, "Time from a request's arrival to its answer, by route.");
    describe_histogram!(
        STAGE_SECONDS,
        "Time of each ranking stage: features, queue, inference, shown (the shown slots scored again at their positions)."
    );
    describe_histogram!(BATCH_ROWS, "Rows in each model run.");
    describe_gauge!(QUEUE_DEPTH, "Ranking jobs waiting for the model of the default version.");
    describe_gauge!(IN_FLIGHT, "Ranking requests being handled.");
    describe_counter!(
        SHED,
        "Ranking requests refused with 429 (no place within the admission wait, or the model's queue full)."
    );
    describe_gauge!(ADMISSION_LIMIT, "Ranking requests admitted at once: the adaptive limit.");
    describe_counter!(
        DEGRADED,
        "Ranking requests answered with default features, by reason (unreachable, timeout, error)."
    );
    describe_gauge!(LOADED_VERSIONS, "Model versions loaded.");
    describe_counter!(
        VERSION_CHANGES,
        "Model version changes, by outcome (swapped, refused, unreadable, failed_inference: back to the previous version)."
    );
    describe_counter!(
        IMPRESSIONS_DROPPED,
        "Impressions not logged, by reason (buffer_full, not_queued, not_delivered)."
    );
    describe_counter!(ORT_ERRORS, "Model runs that failed in ONNX Runtime.");
    describe_counter!(
        SHADOW,
        "Requests copied to a shadowed candidate, by outcome (scored, failed, dropped: no place free)."
    );
    describe_histogram!(SHADOW_SECONDS, "Time the shadowed candidate took to score a copy.");
    describe_counter!(
        SHOWN_RESCORED,
        "Requests whose shown slots were scored again at their positions, by outcome (scored, failed: the \
         impressions keep the top slot's score)."
    );
    describe_gauge!(SHADOW_PSI, "Population stability index of the shadowed candidate's scores against production's.");
    describe_gauge!(
        SHADOW_AGREEMENT,
        "Mean share of production's shown slots the shadowed candidate would also have shown."
    );
    describe_histogram!(
        ARM_SECONDS,
        "Time to answer a request routed by a rollout, by rollout, step, arm, model version and status class."
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections the server closed or refused, by reason (evicted, refused, accept_failed)."
    );
    describe_gauge!(GPU_MEMORY_USED, "Memory in use on the GPU models run on, by every process, by device.");
    describe_gauge!(GPU_MEMORY_TOTAL, "Memory of the GPU models run on, by device.");
}

pub(crate) fn gpu_memory(device: &crate::gpu::Device) {
    let labels = [("device", device.ordinal.to_string()), ("name", device.name.clone())];
    gauge!(GPU_MEMORY_USED, &labels).set(device.used_bytes as f64);
    gauge!(GPU_MEMORY_TOTAL, &labels).set(device.total_bytes as f64);
}

pub(crate) fn request(route: &'static str, status: u16, seconds: f64) {
    counter!(REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
    histogram!(REQUEST_SECONDS, "route" => route).record(seconds);
}

/// A request a rollout routed: what the rollout controller judges each arm's errors and latency
/// by (contracts::arm_requests).
pub(crate) fn arm(assigned: Assignment, version: u64, status: u16, seconds: f64) {
    let labels = [
        ("rollout", assigned.rollout.to_string()),
        ("step", assigned.step.to_string()),
        ("arm", assigned.arm.as_str().to_string()),
        ("version", version.to_string()),
        ("status", arm_requests::status_class(status).to_string()),
    ];
    histogram!(ARM_SECONDS, &labels).record(seconds);
}

/// The recorder `adrank serve` installs: summaries, except the rollout histogram, whose buckets
/// add up across replicas. Histograms idle for a while are dropped, so that the series of ended
/// rollouts do not pile up in a long-lived server.
pub fn exporter() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ARM_SECONDS.to_string()), &arm_requests::buckets())
        .expect("the bucket bounds are not empty")
        .idle_timeout(MetricKindMask::HISTOGRAM, Some(IDLE_HISTOGRAMS))
}

/// Longer than a rollout step is allowed to wait (`rollout.max_step_secs`' default).
const IDLE_HISTOGRAMS: Duration = Duration::from_secs(8 * 3600);

pub(crate) fn shadow(outcome: &'static str) {
    counter!(SHADOW, "outcome" => outcome).increment(1);
}

pub(crate) fn shown_rescored(outcome: &'static str) {
    counter!(SHOWN_RESCORED, "outcome" => outcome).increment(1);
}

pub(crate) fn shadow_seconds(seconds: f64) {
    histogram!(SHADOW_SECONDS).record(seconds);
}

pub(crate) fn shadow_comparison(psi: f64, agreement: f64) {
    gauge!(SHADOW_PSI).set(psi);
    gauge!(SHADOW_AGREEMENT).set(agreement);
}

pub(crate) fn stages(features: f64, queue: f64, inference: f64) {
    histogram!(STAGE_SECONDS, "stage" => "features").record(features);
    histogram!(STAGE_SECONDS, "stage" => "queue").record(queue);
    histogram!(STAGE_SECONDS, "stage" => "inference").record(inference);
}

pub(crate) fn shown_stage(seconds: f64) {
    histogram!(STAGE_SECONDS, "stage" => "shown").record(seconds);
}

pub(crate) fn batch(rows: usize, failed: bool) {
    histogram!(BATCH_ROWS).record(rows as f64);
    if failed {
        counter!(ORT_ERRORS).increment(1);
    }
}

pub(crate) fn queue_depth(jobs: usize) {
    gauge!(QUEUE_DEPTH).set(jobs as f64);
}

pub(crate) fn in_flight(delta: f64) {
    gauge!(IN_FLIGHT).increment(delta);
}

pub(crate) fn admission_limit(places: usize) {
    gauge!(ADMISSION_LIMIT).set(places as f64);
}

pub(crate) fn shed() {
    counter!(SHED).increment(1);
}

/// Why a request ranked with default features: `unreachable` (no connection to the online
/// store), `timeout` (the read took more than half the request's budget), `error` (the store
/// answered with an error, or the connection broke).
static DEGRADED_LOG: Throttle = Throttle::every_ms(10_000);

pub(crate) fn degraded(reason: &'static str, error: Option<&dyn std::fmt::Display>) {
    counter!(DEGRADED, "reason" => reason).increment(1);
    warn_throttled(&DEGRADED_LOG, reason, error, "ranking with default features: the online store read failed");
}

pub(crate) fn versions(loaded: usize, outcome: &'static str) {
    gauge!(LOADED_VERSIONS).set(loaded as f64);
    counter!(VERSION_CHANGES, "outcome" => outcome).increment(1);
}

/// Why impressions were not logged: `buffer_full` (Kafka slow or down: the oldest went),
/// `not_queued` (the producer would not take it), `not_delivered` (the broker refused it, or it
/// timed out).
static DROPPED_LOG: Throttle = Throttle::every_ms(10_000);

pub(crate) fn impressions_dropped(n: u64, reason: &'static str, error: Option<&dyn std::fmt::Display>) {
    counter!(IMPRESSIONS_DROPPED, "reason" => reason).increment(n);
    warn_throttled(&DROPPED_LOG, reason, error, "impressions dropped, not logged to Kafka");
}

/// A warning for a failure counted by `reason`, at most once per the throttle's interval.
fn warn_throttled(throttle: &Throttle, reason: &'static str, error: Option<&dyn std::fmt::Display>, what: &str) {
    if let Some(skipped) = throttle.allow() {
        let error = error.map(ToString::to_string).unwrap_or_default();
        tracing::warn!(reason, %error, skipped, "{what}");
    }
}

pub(crate) fn connection_closed(reason: &'static str) {
    counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use adrank_contracts::arm_requests::{ArmStep, parse};
    use adrank_registry::{Arm, Assignment};

    #[test]
    fn the_rollout_histogram_reads_back_per_arm_and_step() {
        let recorder = super::exporter().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let assigned = Assignment { rollout: 4, step: 2, arm: Arm::Candidate };
            for (status, seconds) in [(200, 0.003), (200, 0.004), (200, 0.2), (503, 0.001), (429, 0.0)] {
                super::arm(assigned, 9, status, seconds);
            }
            super::arm(Assignment { arm: Arm::Production, ..assigned }, 8, 200, 0.002);
        });
        let arms = parse(&handle.render()).unwrap();
        let candidate = &arms[&ArmStep { rollout: 4, step: 2, arm: "candidate".into() }];
        assert_eq!((candidate.requests, candidate.errors, candidate.ok()), (5, 1, 3), "{candidate:?}");
        let (bound, slower) = candidate.slower_than(0.01).unwrap();
        assert_eq!(slower, 1, "one of the successful answers took longer than {bound} s");
        assert_eq!(arms[&ArmStep { rollout: 4, step: 2, arm: "production".into() }].ok(), 1);
    }
}
