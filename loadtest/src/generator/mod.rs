//! The open-loop load generator (wrk2's model): requests are sent on a schedule fixed before
//! the run, never held back waiting for replies, and every latency is measured from the
//! request's intended send time. A server that stalls therefore shows in the percentiles as
//! the wait every scheduled request suffered, instead of as one slow reply (coordinated
//! omission corrected).
//!
//! Each of `connections` keep-alive connections owns every n-th request of the schedule; when
//! its previous reply is late, the next request goes out late and its latency still counts
//! from the intended time; the lateness itself is counted, never hidden.

pub(crate) mod grpc;
pub(crate) mod http;
mod progress;
mod schedule;
mod series;
mod source;
mod sweep;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

pub use http::Failure;
pub use progress::Progress;
pub use schedule::{Arrivals, intended_offsets};
pub use series::{Second, per_second};
pub use source::{Cycle, Source};
pub use sweep::{Slo, Step, SweepPlan, knee};

/// How late a send may be before it counts as late.
pub const LATE: Duration = Duration::from_millis(1);

/// Requests due this close together are released together (see [`pace`]).
const RELEASE_GROUP: Duration = Duration::from_micros(100);

/// CPU seconds the calling thread has used; NaN where /proc cannot tell.
pub fn thread_cpu_seconds() -> f64 {
    cpu_seconds("/proc/thread-self/stat").unwrap_or(f64::NAN)
}

/// CPU seconds (user + system, in 10 ms ticks) from a /proc `stat` file: `/proc/<pid>/stat` for
/// a whole process, `/proc/thread-self/stat` for the calling thread. `None` when it cannot be
/// read or parsed.
pub fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The fields after the command name (which may hold spaces) start after the last ')':
    // utime and stime, fields 14 and 15 of the line, are the 12th and 13th of those.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Releases every request at its intended time, from a thread of its own: tokio's timer wakes
/// on whole milliseconds (rounding up), which would send requests up to a millisecond late and
/// add that to every latency; the operating system's timer, with the thread's timer slack
/// lowered, wakes within microseconds. A connection waits on its gate and sends when a permit
/// arrives; permits pile up when it is behind, so nothing is ever skipped. Releases are
/// grouped by [`RELEASE_GROUP`], until the schedule ends or `progress` is stopped.
///
/// Returns the thread's CPU seconds and how many requests it released.
fn pace(
    start: Instant,
    offsets: Arc<Vec<Duration>>,
    gates: Vec<Arc<Semaphore>>,
    progress: Arc<Progress>,
) -> std::thread::JoinHandle<(f64, usize)> {
    std::thread::Builder::new()
        .name("loadgen-pacer".into())
        .spawn(move || {
            // 1 µs instead of the default 50 µs; without it sleeps merely end later.
            let _ = nix::sys::prctl::set_timerslack(1_000);
            let cpu = thread_cpu_seconds();
            let mut i = 0;
            while i < offsets.len() {
                if progress.stopped() {
                    // Every connection wakes, sees the stop and ends.
                    gates.iter().for_each(|g| g.add_permits(Semaphore::MAX_PERMITS / 2));
                    break;
                }
                // Requests due within RELEASE_GROUP of this one go together, at the last one's
                // time: at most 10,000 wake-ups a second whatever the rate, each request at
                // most that much late.
                let group = offsets[i..].iter().take_while(|o| **o < offsets[i] + RELEASE_GROUP).count();
                let due = start + offsets[i + group - 1];
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                for k in i..i + group {
                    gates[k % gates.len()].add_permits(1);
                }
                i += group;
            }
            (thread_cpu_seconds() - cpu, i)
        })
        .expect("cannot start the pacer thread")
}

/// One run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The server; only loopback addresses are accepted.
    pub target: SocketAddr,
    /// How requests are sent: HTTP POSTs to a path, or gRPC `Rank` calls.
    pub api: Api,
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

/// The API a run drives; the source's bodies must be in its encoding (JSON for HTTP, protobuf
/// for gRPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Api {
    /// `POST` to this path over HTTP/1.1 keep-alive connections.
    Http(String),
    /// `adrank.v1.Ranking/Rank` over HTTP/2 connections, one call at a time on each.
    Grpc,
}

impl Api {
    /// The ranking API over HTTP: `POST /v1/rank`.
    pub fn rank() -> Self {
        Self::Http("/v1/rank".into())
    }
}

/// One connection of either API.
enum Connection {
    Http(http::Connection, String),
    /// Boxed: tonic's endpoint settings make it several times the size of the other.
    Grpc(Box<grpc::Connection>),
}

impl Connection {
    fn new(api: &Api, target: SocketAddr) -> Self {
        match api {
            Api::Http(path) => Self::Http(http::Connection::new(target), path.clone()),
            Api::Grpc => Self::Grpc(Box::new(grpc::Connection::new(target))),
        }
    }

    async fn send(&mut self, body: &Bytes, timeout: Duration) -> Result<(u16, &[u8]), Failure> {
        match self {
            Self::Http(connection, path) => connection.post(path, body, timeout).await,
            Self::Grpc(connection) => connection.rank(body, timeout).await,
        }
    }
}

/// How one measured request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Status(u16),
    Failed(Failure),
}

impl Outcome {
    /// A reply with a 2xx status.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Status(200..=299))
    }
}

/// One measured request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Its intended send time, from the start of the schedule.
    pub intended_us: u64,
    /// From the intended send time to the end of the reply (or of the failure).
    pub latency_us: u64,
    /// When it was actually sent, from the start of the schedule.
    pub sent_us: u64,
    pub outcome: Outcome,
}

impl Sample {
    /// Sent more than [`LATE`] after its intended time.
    pub fn late(&self) -> bool {
        self.sent_us.saturating_sub(self.intended_us) > LATE.as_micros() as u64
    }
}

/// What a run measured (after the warm-up).
#[derive(Debug, Clone)]
pub struct RunReport {
    pub rate: f64,
    pub scheduled: u64,
    /// Replies by status code.
    pub statuses: BTreeMap<u16, u64>,
    pub failures: BTreeMap<Failure, u64>,
    /// Requests sent more than [`LATE`] after their intended time (the generator or a
    /// connection fell behind).
    pub late: u64,
    /// Requests per second actually sent, from the first to the last measured send.
    pub achieved_rate: f64,
    /// Requests per second the schedule itself meant over the same requests (with Poisson
    /// arrivals a short run's schedule differs from the nominal rate by chance).
    pub intended_rate: f64,
    /// Microseconds from intended send time to the end of the reply, replies only.
    pub latency_us: Histogram<u64>,
    /// Every measured request, by intended send time.
    pub samples: Vec<Sample>,
    /// CPU seconds of the pacer thread that released the requests (the rest of the
    /// generator's CPU is the runtime's it ran on).
    pub pacer_cpu_seconds: f64,
}

impl RunReport {
    /// Measured requests that did not end in a 2xx reply.
    pub fn errors(&self) -> u64 {
        self.samples.iter().filter(|s| !s.outcome.is_success()).count() as u64
    }

    /// Latency at quantile `q` of the replies, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Latency at quantile `q` of the replies measured from when each request was actually sent
    /// (wrk2's "uncorrected" latency, what closed-loop tools such as wrk report): beside the
    /// corrected figure it shows how much of the latency was the wait to be sent.
    pub fn service_latency_ms(&self, q: f64) -> f64 {
        let mut h = histogram();
        for s in self.samples.iter().filter(|s| matches!(s.outcome, Outcome::Status(_))) {
            h.saturating_record(s.latency_us.saturating_sub(s.sent_us.saturating_sub(s.intended_us)).max(1));
        }
        h.value_at_quantile(q) as f64 / 1000.0
    }

    /// Latency at quantile `q` of the 2xx replies only, in milliseconds (what admitted
    /// requests saw when the server sheds the rest).
    pub fn admitted_latency_ms(&self, q: f64) -> f64 {
        let mut h = histogram();
        self.samples.iter().filter(|s| s.outcome.is_success()).for_each(|s| h.saturating_record(s.latency_us.max(1)));
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Why a run did not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeneratorError {
    #[error("the target {0} is not a loopback address; load tests only send to this machine")]
    NotLoopback(SocketAddr),
    #[error("the run needs {0}")]
    Settings(&'static str),
}

/// A histogram of microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds; this is a bug")
}

/// Runs the schedule against the target with bodies from `source`, reporting to `progress`.
pub async fn run<S: Source>(
    config: &RunConfig,
    source: Arc<S>,
    progress: Arc<Progress>,
) -> Result<RunReport, GeneratorError> {
    if !config.target.ip().is_loopback() {
        return Err(GeneratorError::NotLoopback(config.target));
    }
    if !(config.rate.is_finite() && config.rate > 0.0) || config.connections == 0 {
        return Err(GeneratorError::Settings("a positive rate and at least one connection"));
    }
    let offsets = Arc::new(intended_offsets(config.rate, config.duration, config.arrivals, config.seed));
    let start = Instant::now() + Duration::from_millis(50);
    let gates: Vec<Arc<Semaphore>> = (0..config.connections).map(|_| Arc::new(Semaphore::new(0))).collect();
    let tasks: Vec<_> = (0..config.connections)
        .map(|c| {
            let (offsets, source, progress, config) =
                (Arc::clone(&offsets), Arc::clone(&source), Arc::clone(&progress), config.clone());
            let gate = Arc::clone(&gates[c]);
            tokio::spawn(async move {
                let mut connection = Connection::new(&config.api, config.target);
                let mut samples = Vec::with_capacity(offsets.len() / config.connections + 1);
                for i in (c..offsets.len()).step_by(config.connections) {
                    let intended = start + offsets[i];
                    gate.acquire().await.expect("gates are never closed").forget();
                    if progress.stopped() {
                        break;
                    }
                    let Some((body, tag)) = source.next(i).await else { break };
                    let sent = Instant::now();
                    let result = connection.send(&body, config.timeout).await;
                    let done = Instant::now();
                    let measured = offsets[i] >= config.warmup;
                    let outcome = match result {
                        Ok((status, reply)) => {
                            source.reply(tag, status, reply, measured);
                            Outcome::Status(status)
                        }
                        Err(failure) => Outcome::Failed(failure),
                    };
                    if !measured {
                        continue;
                    }
                    let sample = Sample {
                        intended_us: offsets[i].as_micros() as u64,
                        latency_us: done.duration_since(intended).as_micros().max(1) as u64,
                        sent_us: sent.saturating_duration_since(start).as_micros() as u64,
                        outcome,
                    };
                    progress.record(&sample);
                    samples.push(sample);
                }
                samples
            })
        })
        .collect();
    let pacer = pace(start, Arc::clone(&offsets), gates, Arc::clone(&progress));
    let mut samples = Vec::with_capacity(offsets.len());
    for task in tasks {
        samples.extend(task.await.expect("a connection task panicked; this is a bug"));
    }
    let (pacer_cpu_seconds, released) = pacer.join().expect("the pacer thread panicked; this is a bug");
    samples.sort_by_key(|s| s.intended_us);
    let mut report = RunReport {
        rate: config.rate,
        scheduled: offsets[..released].iter().filter(|o| **o >= config.warmup).count() as u64,
        statuses: BTreeMap::new(),
        failures: BTreeMap::new(),
        late: samples.iter().filter(|s| s.late()).count() as u64,
        achieved_rate: 0.0,
        intended_rate: 0.0,
        latency_us: histogram(),
        samples: Vec::new(),
        pacer_cpu_seconds,
    };
    for s in &samples {
        match s.outcome {
            Outcome::Status(status) => {
                *report.statuses.entry(status).or_default() += 1;
                report.latency_us.saturating_record(s.latency_us);
            }
            Outcome::Failed(failure) => *report.failures.entry(failure).or_default() += 1,
        }
    }
    // From the actual send times: a generator that fell behind shows a lower rate.
    let (first, last) = samples.iter().fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.sent_us), hi.max(s.sent_us)));
    if samples.len() > 1 && last > first {
        report.achieved_rate = (samples.len() - 1) as f64 / ((last - first) as f64 / 1e6);
    }
    let span = samples.last().map_or(0, |s| s.intended_us) - samples.first().map_or(0, |s| s.intended_us);
    if samples.len() > 1 && span > 0 {
        report.intended_rate = (samples.len() - 1) as f64 / (span as f64 / 1e6);
    }
    report.samples = samples;
    Ok(report)
}
