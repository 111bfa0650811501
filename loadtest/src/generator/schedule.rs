//! When each request is meant to be sent: the open-loop schedule.

use std::time::Duration;

use crate::world::rng::Rng;

/// How arrivals are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    /// Exactly 1/rate apart (wrk2).
    Constant,
    /// Exponential gaps with mean 1/rate (an open system of independent users; k6's and
    /// vegeta's open model).
    Poisson,
}

/// The intended send offsets, from the run's start, of every request in `duration` at `rate`
/// requests per second.
pub fn intended_offsets(rate: f64, duration: Duration, arrivals: Arrivals, seed: u64) -> Vec<Duration> {
    let mut rng = Rng::new(seed, 0x5C4E_D01E);
    let end = duration.as_secs_f64();
    let mut offsets = Vec::with_capacity((rate * end) as usize + 1);
    let mut t = 0.0;
    for i in 1u64.. {
        t = match arrivals {
            // Computed, not accumulated: a long run does not drift by rounding.
            Arrivals::Constant => i as f64 / rate,
            Arrivals::Poisson => t + rng.exponential(1.0 / rate),
        };
        if t >= end {
            break;
        }
        offsets.push(Duration::from_secs_f64(t));
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_have_the_rate_asked_for() {
        let constant = intended_offsets(1000.0, Duration::from_secs(2), Arrivals::Constant, 1);
        assert_eq!(constant.len(), 1999);
        assert!(constant.windows(2).all(|w| (w[1] - w[0]).as_secs_f64() - 0.001 < 1e-9));
        let poisson = intended_offsets(1000.0, Duration::from_secs(20), Arrivals::Poisson, 1);
        assert!((poisson.len() as f64 - 20_000.0).abs() < 600.0, "{}", poisson.len());
        assert!(poisson.windows(2).all(|w| w[1] >= w[0]));
    }
}
