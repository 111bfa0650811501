//! Log lines at a bounded rate: a failure that repeats on every request (a broker down, Redis
//! refusing) is written once per interval with how many were left out, while its counter counts
//! every one.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

/// One call site's rate limit.
#[derive(Debug)]
pub(crate) struct Throttle {
    every_ms: u64,
    /// When the last line was written, milliseconds after the process's first check, plus one
    /// (0: never).
    last: AtomicU64,
    skipped: AtomicU64,
}

impl Throttle {
    pub(crate) const fn every_ms(every_ms: u64) -> Self {
        Self { every_ms, last: AtomicU64::new(0), skipped: AtomicU64::new(0) }
    }

    /// Whether to write a line now; if so, how many were left out since the last one.
    pub(crate) fn allow(&self) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_millis() as u64;
        self.allow_at(now)
    }

    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let stamp = now_ms + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || stamp >= last + self.every_ms;
        // One thread wins the slot; the others count themselves as left out.
        if due && self.last.compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let throttle = Throttle::every_ms(1000);
        assert_eq!(throttle.allow_at(0), Some(0));
        assert_eq!(throttle.allow_at(10), None);
        assert_eq!(throttle.allow_at(999), None);
        assert_eq!(throttle.allow_at(1000), Some(2));
        assert_eq!(throttle.allow_at(1500), None);
        assert_eq!(throttle.allow_at(5000), Some(1));
    }
}
