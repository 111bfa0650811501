//! A run second by second: what the "latency over time" plot draws.

use serde::Serialize;

use super::{Outcome, Sample, histogram};

/// One second of a run, by intended send time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the start of the schedule.
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub late: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The samples (sorted by intended time) grouped into whole seconds.
pub fn per_second(samples: &[Sample]) -> Vec<Second> {
    let mut out = Vec::new();
    for group in samples.chunk_by(|a, b| a.intended_us / 1_000_000 == b.intended_us / 1_000_000) {
        let mut h = histogram();
        group
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Status(_)))
            .for_each(|s| h.saturating_record(s.latency_us));
        let ms = |q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
        out.push(Second {
            second: group[0].intended_us / 1_000_000,
            requests: group.len() as u64,
            errors: group.iter().filter(|s| !s.outcome.is_success()).count() as u64,
            late: group.iter().filter(|s| s.late()).count() as u64,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            max_ms: if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
        });
    }
    out
}
