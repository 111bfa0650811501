//! One point of the dashboard's history, made from a status: the replicas' counters become
//! rates against the previous sample, the parts' figures are kept as the charts draw them.

use serde::Serialize;

use super::status::{Part, Status};

/// The figures at one moment. `None` where the part could not be read (a gap in the chart).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Sample {
    /// Milliseconds since the Unix epoch.
    pub(super) t: i64,
    pub(super) replicas: usize,
    pub(super) replicas_ready: usize,
    /// Ranking requests per second over the replicas, and those answered 5xx or shed (429).
    pub(super) rank_rps: Option<f64>,
    pub(super) error_rps: Option<f64>,
    pub(super) shed_rps: Option<f64>,
    /// The slowest replica's recent ranking latency quantiles.
    pub(super) p50_ms: Option<f64>,
    pub(super) p99_ms: Option<f64>,
    /// Messages not yet applied to the online store, and the age of the oldest (0: caught up).
    pub(super) lag: Option<i64>,
    pub(super) freshness_secs: Option<f64>,
    pub(super) rollout: Option<RolloutPoint>,
    /// Each arm of a rollout under way.
    pub(super) arms: Vec<ArmPoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct RolloutPoint {
    pub(super) id: u64,
    pub(super) status: &'static str,
    pub(super) production: u64,
    pub(super) candidate: u64,
    /// The candidate's share of users, percent.
    pub(super) weight: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct ArmPoint {
    pub(super) arm: &'static str,
    pub(super) version: u64,
    pub(super) rps: f64,
    pub(super) p99_ms: Option<f64>,
    pub(super) impressions: u64,
    pub(super) ctr: Option<f64>,
    pub(super) calibration: Option<f64>,
}

/// The replicas' counters summed, to make the next sample's rates.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Counters {
    t: i64,
    requests: Option<f64>,
    errors: Option<f64>,
    shed: Option<f64>,
}

impl Sample {
    pub(super) fn of(status: &Status, previous: Option<&Counters>) -> (Sample, Counters) {
        let replicas = &status.replicas;
        let total = |figure: fn(&super::status::Replica) -> Option<f64>| {
            let read: Vec<f64> = replicas.iter().filter_map(figure).collect();
            (!read.is_empty()).then(|| read.iter().sum::<f64>())
        };
        let slowest =
            |figure: fn(&super::status::Replica) -> Option<f64>| replicas.iter().filter_map(figure).reduce(f64::max);
        let counters = Counters {
            t: status.taken_at_ms,
            requests: total(|r| r.rank_requests),
            errors: total(|r| r.rank_errors),
            shed: total(|r| r.shed),
        };
        let rate = |now: Option<f64>, then: fn(&Counters) -> Option<f64>| {
            let previous = previous?;
            let secs = (counters.t - previous.t) as f64 / 1e3;
            let delta = now? - then(previous)?;
            // A replica restarted (its counters began again) or the clock stood still: no rate.
            (secs > 0.0 && delta >= 0.0).then(|| delta / secs)
        };
        let (lag, freshness_secs) = match &status.ingest {
            Part::Read(topics) => {
                let lag = topics.iter().map(|t| t.lag).sum();
                let oldest = topics.iter().filter(|t| t.lag > 0).filter_map(|t| t.oldest_pending_ms).min();
                let age = oldest.map_or(0.0, |ms| (status.taken_at_ms - ms).max(0) as f64 / 1e3);
                (Some(lag), (lag == 0 || oldest.is_some()).then_some(age))
            }
            Part::Unreadable(_) => (None, None),
        };
        let (rollout, arms) = match &status.rollout {
            Part::Read(Some(view)) => {
                let r = &view.rollout;
                let point = RolloutPoint {
                    id: r.id,
                    status: r.status.as_str(),
                    production: r.production,
                    candidate: r.candidate,
                    weight: r.weight(),
                };
                let arms = view
                    .arms
                    .iter()
                    .map(|a| ArmPoint {
                        arm: a.arm,
                        version: a.version,
                        rps: a.requests_per_sec,
                        p99_ms: a.p99_ms,
                        impressions: a.impressions,
                        ctr: a.ctr,
                        calibration: a.calibration,
                    })
                    .collect();
                (Some(point), arms)
            }
            _ => (None, Vec::new()),
        };
        let sample = Sample {
            t: status.taken_at_ms,
            replicas: replicas.len(),
            replicas_ready: replicas
                .iter()
                .filter(|r| matches!(&r.ready, Part::Read(body) if body["ready"] == true))
                .count(),
            rank_rps: rate(counters.requests, |c| c.requests),
            error_rps: rate(counters.errors, |c| c.errors),
            shed_rps: rate(counters.shed, |c| c.shed),
            p50_ms: slowest(|r| r.rank_p50_ms),
            p99_ms: slowest(|r| r.rank_p99_ms),
            lag,
            freshness_secs,
            rollout,
            arms,
        };
        (sample, counters)
    }
}

#[cfg(test)]
mod tests {
    use adrank_featurestore::ingest::standing::TopicStanding;

    use super::*;
    use crate::commands::status::Replica;

    fn status(t: i64, requests: Option<f64>, lag: i64, oldest_pending_ms: Option<i64>) -> Status {
        Status {
            taken_at_ms: t,
            model: "ctr".into(),
            dependencies: Vec::new(),
            models: Part::Read(Vec::new()),
            rollout: Part::Read(None),
            replicas: vec![Replica {
                metrics: "http://127.0.0.1:1/metrics".into(),
                ready: Part::Read(serde_json::json!({ "ready": true })),
                rank_requests: requests,
                rank_errors: requests.map(|_| 0.0),
                shed: None,
                rank_p50_ms: Some(3.0),
                rank_p99_ms: Some(9.0),
            }],
            ingest: Part::Read(vec![TopicStanding {
                topic: "impressions".into(),
                partitions: 4,
                end: 100,
                lag,
                oldest_pending_ms,
            }]),
            retraining: Part::Read(Vec::new()),
        }
    }

    #[test]
    fn counters_become_rates_against_the_previous_sample() {
        let (first, counters) = Sample::of(&status(10_000, Some(100.0), 0, None), None);
        assert_eq!((first.rank_rps, first.replicas_ready, first.p99_ms), (None, 1, Some(9.0)));
        assert_eq!((first.lag, first.freshness_secs), (Some(0), Some(0.0)));
        let (second, counters) = Sample::of(&status(12_000, Some(150.0), 7, Some(9_000)), Some(&counters));
        assert_eq!((second.rank_rps, second.error_rps, second.shed_rps), (Some(25.0), Some(0.0), None));
        assert_eq!((second.lag, second.freshness_secs), (Some(7), Some(3.0)));
        // A restarted replica counts from zero again: no rate, rather than a negative one.
        let (third, counters) = Sample::of(&status(14_000, Some(20.0), 7, None), Some(&counters));
        assert_eq!((third.rank_rps, third.freshness_secs), (None, None));
        // A replica that cannot be read leaves a gap.
        let (fourth, _) = Sample::of(&status(16_000, None, 0, None), Some(&counters));
        assert_eq!(fourth.rank_rps, None);
    }
}
