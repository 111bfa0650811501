//! Sweep mode (perf_analyzer's rate sweep, open-loop): step the offered rate up until the SLO
//! breaks, then bisect between the last rate that held and the first that did not. The knee
//! is the highest rate that held the SLO with no errors.

use serde::Serialize;

use super::RunReport;

/// What a step must hold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Slo {
    /// p99 latency, from the intended send time, in milliseconds.
    pub p99_ms: f64,
}

/// How to step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SweepPlan {
    pub start_rate: f64,
    /// Each ramp step offers this many times the previous rate.
    pub factor: f64,
    /// The ramp stops here even if the SLO still holds.
    pub max_rate: f64,
    /// Bisection steps after the first failure.
    pub refine: u32,
}

/// One step of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub rate: f64,
    pub achieved_rate: f64,
    pub requests: u64,
    pub errors: u64,
    pub late: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Successful replies per second.
    pub throughput: f64,
    pub held: bool,
}

impl Step {
    /// Summarises a step's run against the SLO. A step holds when its p99 is within the SLO,
    /// nothing failed, and the rate achieved is within 1% of the offered one: a rate that was
    /// not really offered proves nothing. Requests sent late (the generator was starved of CPU
    /// for a moment) do not fail a step by themselves: their wait counts in the latency, which
    /// is measured from the intended send time. (With Poisson arrivals the achieved rate is compared with the rate the
    /// schedule meant over the same requests, which differs from the nominal one by chance.)
    pub fn of(report: &RunReport, slo: Slo, seconds: f64) -> Self {
        let errors = report.errors();
        let p99 = report.latency_ms(0.99);
        let ok = report.samples.len() as u64 - errors;
        Self {
            rate: report.rate,
            achieved_rate: report.achieved_rate,
            requests: report.samples.len() as u64,
            errors,
            late: report.late,
            p50_ms: report.latency_ms(0.5),
            p99_ms: p99,
            p999_ms: report.latency_ms(0.999),
            throughput: ok as f64 / seconds,
            held: errors == 0 && p99 <= slo.p99_ms && report.achieved_rate >= 0.99 * report.intended_rate,
        }
    }
}

impl SweepPlan {
    /// The next rate to offer after `steps`, or `None` when the sweep is over.
    pub fn next_rate(&self, steps: &[Step]) -> Option<f64> {
        let Some(last) = steps.last() else { return Some(self.start_rate) };
        let failed = steps.iter().filter(|s| !s.held).map(|s| s.rate).fold(f64::INFINITY, f64::min);
        if failed.is_infinite() {
            let next = last.rate * self.factor;
            return (last.rate < self.max_rate).then(|| next.min(self.max_rate));
        }
        let ramp_end = steps.iter().position(|s| !s.held).expect("a step failed");
        if steps.len() - 1 - ramp_end >= self.refine as usize {
            return None;
        }
        let held = knee(steps).map_or(0.0, |s| s.rate);
        Some((held + failed) / 2.0)
    }
}

/// The highest rate that held, if any did below the lowest that failed.
pub fn knee(steps: &[Step]) -> Option<&Step> {
    let failed = steps.iter().filter(|s| !s.held).map(|s| s.rate).fold(f64::INFINITY, f64::min);
    steps.iter().filter(|s| s.held && s.rate < failed).max_by(|a, b| a.rate.total_cmp(&b.rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, held: bool) -> Step {
        Step {
            rate,
            achieved_rate: rate,
            requests: 1,
            errors: 0,
            late: 0,
            p50_ms: 1.0,
            p99_ms: 1.0,
            p999_ms: 1.0,
            throughput: rate,
            held,
        }
    }

    #[test]
    fn the_sweep_ramps_then_bisects_towards_the_knee() {
        let plan = SweepPlan { start_rate: 100.0, factor: 2.0, max_rate: 10_000.0, refine: 2 };
        let capacity = 700.0;
        let mut steps = Vec::new();
        while let Some(rate) = plan.next_rate(&steps) {
            steps.push(step(rate, rate <= capacity));
        }
        let rates: Vec<f64> = steps.iter().map(|s| s.rate).collect();
        assert_eq!(rates, [100.0, 200.0, 400.0, 800.0, 600.0, 700.0]);
        assert_eq!(knee(&steps).unwrap().rate, 700.0);
    }

    #[test]
    fn the_ramp_stops_at_the_maximum_and_a_first_failure_has_no_knee() {
        let plan = SweepPlan { start_rate: 100.0, factor: 3.0, max_rate: 500.0, refine: 1 };
        let mut steps = Vec::new();
        while let Some(rate) = plan.next_rate(&steps) {
            steps.push(step(rate, true));
        }
        assert_eq!(steps.iter().map(|s| s.rate).collect::<Vec<_>>(), [100.0, 300.0, 500.0]);
        assert_eq!(knee(&steps).unwrap().rate, 500.0);
        let failing = vec![step(100.0, false)];
        assert!(knee(&failing).is_none());
        assert_eq!(plan.next_rate(&failing), Some(50.0));
    }
}
