//! What a run has done so far, for the live progress line.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
};

use hdrhistogram::Histogram;

use super::Sample;

/// Counters the connections bump and a progress line reads; the latency window is taken (and
/// emptied) by each read, so the line shows the p99 of the last interval, not of the run.
#[derive(Debug)]
pub struct Progress {
    done: AtomicU64,
    errors: AtomicU64,
    late: AtomicU64,
    window: Mutex<Histogram<u64>>,
    /// Set by [`Progress::stop`]: the run ends early, after the requests already released.
    stopped: AtomicBool,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            late: AtomicU64::new(0),
            window: Mutex::new(super::histogram()),
            stopped: AtomicBool::new(false),
        }
    }
}

/// A reading of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub done: u64,
    pub errors: u64,
    pub late: u64,
    /// p99 of the replies since the previous reading, in milliseconds (0 when none).
    pub window_p99_ms: f64,
}

impl Progress {
    pub(super) fn record(&self, sample: &Sample) {
        self.done.fetch_add(1, Relaxed);
        if !sample.outcome.is_success() {
            self.errors.fetch_add(1, Relaxed);
        }
        if sample.late() {
            self.late.fetch_add(1, Relaxed);
        }
        if let super::Outcome::Status(_) = sample.outcome {
            self.window.lock().unwrap_or_else(|e| e.into_inner()).saturating_record(sample.latency_us);
        }
    }

    /// Ends the run early: no request is released after this; the run's report covers the
    /// schedule up to here.
    pub fn stop(&self) {
        self.stopped.store(true, Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stopped.load(Relaxed)
    }

    /// The counters so far and the latency since the last reading.
    pub fn read(&self) -> Reading {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let p99 = if window.is_empty() { 0.0 } else { window.value_at_quantile(0.99) as f64 / 1000.0 };
        window.reset();
        Reading {
            done: self.done.load(Relaxed),
            errors: self.errors.load(Relaxed),
            late: self.late.load(Relaxed),
            window_p99_ms: p99,
        }
    }
}
