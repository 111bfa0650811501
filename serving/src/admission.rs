//! Admission control for ranking requests: an adaptive concurrency limit and a short wait for a
//! place, newest first.
//!
//! Ranking is CPU work: past a few requests per core, admitting more only stretches each one
//! (Little's law). A fixed limit is wrong both ways: high enough to absorb the bursts of a
//! moderate load, it lets overload stretch every admitted request; low enough for overload, it
//! refuses those bursts. So the limit follows latency, as Netflix's concurrency-limits and
//! Envoy's adaptive concurrency filter do: every [`WINDOW`] the median latency of the requests
//! that finished is compared with the uncontended latency (the median of recent requests
//! admitted at once while at most [`QUIET`] others ran) times `latency_tolerance`. The limit
//! shrinks in proportion when the median is over that while demand exceeded the limit (a
//! request was refused in the window, or every request admitted in it had to wait: a standing
//! queue, as CoDel tells one from a passing burst); it grows by about its square root when the
//! median is within and the limit was reached. Anything else says nothing about the limit and
//! leaves it alone: below capacity latency varies for reasons a limit cannot fix (the median
//! rather than a tail percentile for the same reason: Poisson bursts near capacity stretch the
//! tail without any overload, and a limiter that shrank for them would shed load the server
//! can carry).
//!
//! A request finding no place waits at most `admission_wait_ms`, and places go to the newest
//! waiter first: under overload the freshest requests get in with little wait and the stale
//! ones are refused with 429, instead of every admitted request carrying the whole wait.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

/// How often the limit is reconsidered (at least [`MIN_SAMPLES`] finished requests apart).
const WINDOW: Duration = Duration::from_millis(100);
const MIN_SAMPLES: usize = 10;
/// A request admitted at once (no queue) with at most this many others in flight measures
/// the uncontended latency. Requests handed a place from the queue never do: at a small limit
/// under overload they run nearly alone too, but on a machine saturated by the load.
const QUIET: usize = 1;
/// Quiet samples are kept for two generations of this long; when load leaves no quiet
/// requests (sustained overload) the last estimate stands.
const QUIET_GENERATION: Duration = Duration::from_secs(10);
/// Samples kept per generation (the newest).
const QUIET_SAMPLES: usize = 2_000;

/// The limiter's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionConfig {
    /// The limit never goes below this.
    pub min_in_flight: usize,
    /// Nor above this; it starts here.
    pub max_in_flight: usize,
    /// The longest a request waits for a place before it is refused.
    pub wait: Duration,
    /// How many times the uncontended latency the median may reach before the limit shrinks.
    pub latency_tolerance: f64,
}

/// Places for ranking requests.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    /// Fractional, so that shrinking in proportion and growing by one compose smoothly; the
    /// places are its floor.
    limit: f64,
    /// Oldest first; places go to the back.
    waiters: VecDeque<oneshot::Sender<Place>>,
    window_started: Instant,
    /// Latencies (seconds) of the requests finished in this window.
    latencies: Vec<f64>,
    /// The most requests in flight at once during this window.
    peak: usize,
    /// Whether every request admitted in this window waited for its place.
    all_waited: bool,
    /// Whether a request was refused in this window.
    refused: bool,
    /// The fastest request yet: the stand-in for the uncontended latency until quiet requests
    /// have measured it (a server started straight into overload has none).
    fastest: f64,
    quiet: QuietLatency,
}

/// The uncontended latency estimate.
#[derive(Debug, Default)]
struct QuietLatency {
    current: Vec<f64>,
    previous: Vec<f64>,
    generation_started: Option<Instant>,
    estimate: Option<f64>,
}

impl QuietLatency {
    fn record(&mut self, seconds: f64, now: Instant) {
        let started = *self.generation_started.get_or_insert(now);
        if now.duration_since(started) >= QUIET_GENERATION || self.current.len() >= QUIET_SAMPLES {
            self.previous = std::mem::take(&mut self.current);
            self.generation_started = Some(now);
        }
        self.current.push(seconds);
    }

    /// The median of the kept samples, or the last estimate when none are kept.
    fn estimate(&mut self, now: Instant) -> Option<f64> {
        if self.generation_started.is_some_and(|s| now.duration_since(s) >= 2 * QUIET_GENERATION) {
            // Both generations are stale: keep the estimate they gave, drop the samples.
            self.current.clear();
            self.previous.clear();
            self.generation_started = None;
        }
        let mut samples: Vec<f64> = self.current.iter().chain(&self.previous).copied().collect();
        if samples.len() >= MIN_SAMPLES {
            let middle = samples.len() / 2;
            let (_, median, _) = samples.select_nth_unstable_by(middle, f64::total_cmp);
            self.estimate = Some(*median);
        }
        self.estimate
    }
}

/// A place: the request holding it is worked on. Dropping it frees the place and reports the
/// request's latency to the limiter.
#[derive(Debug)]
pub struct Place {
    admission: Arc<Admission>,
    admitted: Instant,
    quiet: bool,
    /// False for a place that was never handed over: it must not report or free anything.
    armed: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.armed {
            self.admission.release(self.admitted.elapsed(), self.quiet);
        }
    }
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Arc<Self> {
        let max = config.max_in_flight.max(1);
        let config =
            AdmissionConfig { max_in_flight: max, min_in_flight: config.min_in_flight.clamp(1, max), ..config };
        Arc::new(Self {
            config,
            state: Mutex::new(State {
                in_flight: 0,
                limit: max as f64,
                waiters: VecDeque::new(),
                window_started: Instant::now(),
                latencies: Vec::new(),
                peak: 0,
                all_waited: true,
                refused: false,
                fastest: f64::INFINITY,
                quiet: QuietLatency::default(),
            }),
        })
    }

    /// The current limit (places).
    pub fn limit(&self) -> usize {
        self.lock().places()
    }

    /// A place, at once or within the configured wait; `None`: refuse the request.
    pub async fn acquire(self: &Arc<Self>) -> Option<Place> {
        let mut waiting = {
            let mut state = self.lock();
            if state.waiters.is_empty() && state.in_flight < state.places() {
                state.all_waited = false;
                return Some(self.admit(&mut state, Instant::now(), true));
            }
            if self.config.wait.is_zero() {
                state.refused = true;
                return None;
            }
            // Waiters that gave up leave closed senders behind; few, but never let them pile.
            state.waiters.retain(|w| !w.is_closed());
            let (tx, rx) = oneshot::channel();
            state.waiters.push_back(tx);
            rx
        };
        tokio::select! {
            place = &mut waiting => place.ok(),
            _ = tokio::time::sleep(self.config.wait) => {
                // A place handed over just as the wait ran out is still this request's.
                waiting.close();
                let place = waiting.try_recv().ok();
                if place.is_none() {
                    self.lock().refused = true;
                }
                place
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("the admission lock is never poisoned: nothing panics while holding it")
    }

    fn admit(self: &Arc<Self>, state: &mut State, now: Instant, at_once: bool) -> Place {
        let others = state.in_flight;
        state.in_flight += 1;
        state.peak = state.peak.max(state.in_flight);
        Place { admission: self.clone(), admitted: now, quiet: at_once && others <= QUIET, armed: true }
    }

    fn release(self: &Arc<Self>, latency: Duration, quiet: bool) {
        let now = Instant::now();
        let mut state = self.lock();
        state.in_flight -= 1;
        state.record(latency.as_secs_f64(), quiet, now, &self.config);
        // Free places go to the newest waiter still waiting.
        while state.in_flight < state.places() {
            let Some(waiter) = state.waiters.pop_back() else { break };
            let place = self.admit(&mut state, now, false);
            if let Err(mut place) = waiter.send(place) {
                // That waiter gave up: the place was never handed over.
                place.armed = false;
                state.in_flight -= 1;
            }
        }
    }
}

impl State {
    fn places(&self) -> usize {
        self.limit as usize
    }

    fn record(&mut self, seconds: f64, quiet: bool, now: Instant, config: &AdmissionConfig) {
        self.latencies.push(seconds);
        self.fastest = self.fastest.min(seconds);
        if quiet {
            self.quiet.record(seconds, now);
        }
        if now.duration_since(self.window_started) < WINDOW || self.latencies.len() < MIN_SAMPLES {
            return;
        }
        let middle = self.latencies.len() / 2;
        let (_, median, _) = self.latencies.select_nth_unstable_by(middle, f64::total_cmp);
        let median = *median;
        if let Some(uncontended) = self.quiet.estimate(now).or(Some(self.fastest).filter(|f| f.is_finite())) {
            let target = uncontended * config.latency_tolerance;
            if median > target && (self.all_waited || self.refused) {
                self.limit = (self.limit * (target / median).max(0.5)).max(config.min_in_flight as f64);
            } else if median <= target && self.peak >= self.places() {
                self.limit = (self.limit + self.limit.sqrt().max(1.0)).min(config.max_in_flight as f64);
            }
        }
        crate::metrics::admission_limit(self.places());
        self.latencies.clear();
        self.peak = self.in_flight;
        self.all_waited = true;
        self.refused = false;
        self.window_started = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: usize) -> AdmissionConfig {
        AdmissionConfig {
            min_in_flight: 2,
            max_in_flight: max,
            wait: Duration::from_millis(50),
            latency_tolerance: 3.0,
        }
    }

    #[tokio::test]
    async fn places_run_out_and_come_back() {
        let admission = Admission::new(AdmissionConfig { wait: Duration::ZERO, ..config(2) });
        let a = admission.acquire().await.unwrap();
        let _b = admission.acquire().await.unwrap();
        assert!(admission.acquire().await.is_none(), "no third place, and no wait");
        drop(a);
        assert!(admission.acquire().await.is_some());
    }

    #[tokio::test]
    async fn a_freed_place_goes_to_the_newest_waiter() {
        let admission = Admission::new(config(1));
        let held = admission.acquire().await.unwrap();
        let older = tokio::spawn({
            let admission = admission.clone();
            async move { admission.acquire().await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let newer = tokio::spawn({
            let admission = admission.clone();
            async move { admission.acquire().await.map(drop).is_some() }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(held);
        assert!(newer.await.unwrap(), "the newest waiter gets the place");
        // The newer request finished at once, so the older one gets a place too, within its wait.
        assert!(older.await.unwrap());
    }

    #[tokio::test]
    async fn a_waiter_refused_after_its_wait_leaks_no_place() {
        let admission = Admission::new(config(1));
        let held = admission.acquire().await.unwrap();
        assert!(admission.acquire().await.is_none(), "refused after 50 ms");
        drop(held);
        assert_eq!(admission.lock().in_flight, 0);
        assert!(admission.acquire().await.is_some());
    }

    /// Quiet requests of 2 ms: the uncontended latency.
    fn quiet(state: &mut State, cfg: &AdmissionConfig, start: Instant) {
        for i in 0..50 {
            state.record(0.002, true, start + Duration::from_millis(i), cfg);
        }
    }

    /// One window of finished requests taking `latency(places)` seconds each, the limit reached,
    /// with the window's demand signals as given; `now` moves to the window's end.
    fn window(state: &mut State, cfg: &AdmissionConfig, now: &mut Instant, latency: f64, demand: (bool, bool)) {
        state.peak = state.places();
        for _ in 0..20 {
            state.record(latency, false, *now, cfg);
        }
        *now += WINDOW;
        (state.all_waited, state.refused) = demand;
        state.record(latency, false, *now, cfg);
    }

    const STANDING_QUEUE: (bool, bool) = (true, false);
    const REFUSING: (bool, bool) = (false, true);
    const NO_EXCESS: (bool, bool) = (false, false);

    /// Overload: requests take longer the more run at once (service shared by all). The limit
    /// must come down until the median is within the tolerance of the uncontended latency, and
    /// climb back when the requests are quick again.
    #[test]
    fn the_limit_follows_latency() {
        let admission = Admission::new(config(32));
        let cfg = admission.config;
        let start = Instant::now();
        let mut state = admission.lock();
        quiet(&mut state, &cfg, start);
        let mut now = start + Duration::from_secs(1);
        // Overload, a queue standing: 1 ms per request in flight.
        for _ in 0..40 {
            let places = state.places();
            window(&mut state, &cfg, &mut now, 0.001 * places as f64, STANDING_QUEUE);
        }
        let settled = state.places();
        // A median within 3x of 2 ms allows 6 in flight; growing by the square root overshoots to
        // 8 or 9 before the next window brings it back.
        assert!((5..=9).contains(&settled), "got {settled}");
        // Quick again: the limit climbs back while it is reached, within a second.
        for _ in 0..10 {
            window(&mut state, &cfg, &mut now, 0.002, NO_EXCESS);
        }
        assert_eq!(state.places(), 32);
    }

    /// A server started straight into overload has no quiet requests: the fastest request
    /// stands in for the uncontended latency, so the limit still comes down (here on refusals
    /// alone: some requests got a place at once in every window).
    #[test]
    fn overload_from_the_start_still_brings_the_limit_down() {
        let admission = Admission::new(config(32));
        let cfg = admission.config;
        let mut now = Instant::now();
        let mut state = admission.lock();
        state.record(0.002, false, now, &cfg);
        for _ in 0..20 {
            let places = state.places();
            window(&mut state, &cfg, &mut now, 0.001 * places as f64, REFUSING);
        }
        assert!(state.places() <= 9, "got {}", state.places());
    }

    /// A backlog that drains (some requests get a place at once, none is refused) says nothing
    /// about the limit, however slow: a stall of the machine must not make it shed.
    #[test]
    fn slow_requests_without_excess_demand_leave_the_limit_alone() {
        let admission = Admission::new(config(16));
        let cfg = admission.config;
        let start = Instant::now();
        let mut state = admission.lock();
        quiet(&mut state, &cfg, start);
        let mut now = start + Duration::from_secs(1);
        for _ in 0..20 {
            window(&mut state, &cfg, &mut now, 0.050, NO_EXCESS);
        }
        assert_eq!(state.places(), 16);
    }
}
