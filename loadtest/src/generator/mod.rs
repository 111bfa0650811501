//! The open-loop load generator (wrk2's model): requests are sent on a schedule fixed before
//! the run, never held back waiting for replies, and every latency is measured from the
//! request's intended send time. A server that stalls therefore shows in the percentiles as
//! the wait every scheduled request suffered, instead of as one slow reply (coordinated
//! omission corrected).
//!
//! Each of `connections` keep-alive connections owns every n-th request of the schedule; when
//! its previous reply is late, the next request goes out late and its latency still counts
//! from the intended time; the lateness itself is counted, never hidden.

mod http;
mod schedule;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

pub use http::Failure;
pub use schedule::{Arrivals, intended_offsets};

/// How late a send may be before it counts as late. tokio's timer wakes on whole
/// milliseconds, so on-time sends are routinely up to ~2 ms after their instant (their latency
/// still counts from the intended time); a 1 ms threshold counted most sends of an idle run.
pub const LATE: Duration = Duration::from_millis(5);

/// One run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The server; only loopback addresses are accepted.
    pub target: SocketAddr,
    pub path: String,
    /// Requests per second.
    pub rate: f64,
    pub duration: Duration,
    /// Requests intended before this offset are sent but not measured.
    pub warmup: Duration,
    pub connections: usize,
    pub arrivals: Arrivals,
    /// A reply later than this counts as a timeout.
    pub timeout: Duration,
    pub seed: u64,
}

/// What a run measured (after the warm-up).
#[derive(Debug, Clone)]
pub struct RunReport {
    pub scheduled: u64,
    /// Replies by status code.
    pub statuses: BTreeMap<u16, u64>,
    pub failures: BTreeMap<Failure, u64>,
    /// Requests sent more than [`LATE`] after their intended time (the generator or a
    /// connection fell behind).
    pub late: u64,
    /// Requests per second actually sent, from the first to the last measured send.
    pub achieved_rate: f64,
    /// Microseconds from intended send time to the end of the reply, replies only.
    pub latency_us: Histogram<u64>,
}

/// Why a run did not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeneratorError {
    #[error("the target {0} is not a loopback address; load tests only send to this machine")]
    NotLoopback(SocketAddr),
    #[error("the run needs {0}")]
    Settings(&'static str),
}

struct Connection {
    statuses: BTreeMap<u16, u64>,
    failures: BTreeMap<Failure, u64>,
    late: u64,
    sends: Vec<Instant>,
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds; this is a bug")
}

/// Runs the schedule against the target, cycling through `bodies`.
pub async fn run(config: &RunConfig, bodies: Arc<Vec<Vec<u8>>>) -> Result<RunReport, GeneratorError> {
    if !config.target.ip().is_loopback() {
        return Err(GeneratorError::NotLoopback(config.target));
    }
    if !(config.rate.is_finite() && config.rate > 0.0) || bodies.is_empty() || config.connections == 0 {
        return Err(GeneratorError::Settings("a positive rate, at least one body and one connection"));
    }
    let offsets = Arc::new(intended_offsets(config.rate, config.duration, config.arrivals, config.seed));
    let start = Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = (0..config.connections)
        .map(|c| {
            let (offsets, bodies, config) = (Arc::clone(&offsets), Arc::clone(&bodies), config.clone());
            tokio::spawn(async move {
                let mut connection = http::Connection::new(config.target);
                let mut own = Connection {
                    statuses: BTreeMap::new(),
                    failures: BTreeMap::new(),
                    late: 0,
                    sends: Vec::new(),
                    latency: histogram(),
                };
                for i in (c..offsets.len()).step_by(config.connections) {
                    let intended = start + offsets[i];
                    tokio::time::sleep_until(intended.into()).await;
                    let sent = Instant::now();
                    let result = connection.post(&config.path, &bodies[i % bodies.len()], config.timeout).await;
                    let done = Instant::now();
                    if offsets[i] < config.warmup {
                        continue;
                    }
                    own.sends.push(sent);
                    if sent.duration_since(intended) > LATE {
                        own.late += 1;
                    }
                    match result {
                        Ok(status) => {
                            *own.statuses.entry(status).or_default() += 1;
                            let micros = done.duration_since(intended).as_micros().max(1) as u64;
                            own.latency.saturating_record(micros);
                        }
                        Err(failure) => *own.failures.entry(failure).or_default() += 1,
                    }
                }
                own
            })
        })
        .collect();
    let mut report = RunReport {
        scheduled: offsets.iter().filter(|o| **o >= config.warmup).count() as u64,
        statuses: BTreeMap::new(),
        failures: BTreeMap::new(),
        late: 0,
        achieved_rate: 0.0,
        latency_us: histogram(),
    };
    let mut sends = Vec::new();
    for task in tasks {
        let own = task.await.expect("a connection task panicked; this is a bug");
        own.statuses.into_iter().for_each(|(s, n)| *report.statuses.entry(s).or_default() += n);
        own.failures.into_iter().for_each(|(f, n)| *report.failures.entry(f).or_default() += n);
        report.late += own.late;
        report.latency_us.add(&own.latency).expect("histograms share bounds; this is a bug");
        sends.extend(own.sends);
    }
    sends.sort();
    if let (Some(first), Some(last)) = (sends.first(), sends.last())
        && sends.len() > 1
    {
        report.achieved_rate = (sends.len() - 1) as f64 / last.duration_since(*first).as_secs_f64();
    }
    Ok(report)
}
