//! The `[serving]` config section.

use std::{net::SocketAddr, time::Duration};

use adrank_contracts::ConfigProblem;
use serde::{Deserialize, Serialize};

use crate::batcher::BatcherConfig;

/// The ranking API server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServingConfig {
    /// The address the HTTP API listens on, `ip:port`. Loopback by default; `0.0.0.0:8080`
    /// serves other machines.
    pub listen: SocketAddr,
    /// Where the gRPC API (`adrank.v1.Ranking`, contracts/proto/adrank/v1/ranking.proto)
    /// listens, `ip:port`; unset: no gRPC API. Both APIs share one admission limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<SocketAddr>,
    /// The most candidate rows in one model run. Larger runs use the CPU better and wait
    /// longer to fill; one request bigger than this still runs, alone.
    pub max_batch_rows: usize,
    /// The longest a request waits for others to share its model run (milliseconds): the
    /// latency spent to gain throughput.
    pub max_queue_delay_ms: u64,
    /// Requests waiting for the model before new ones are refused with 429: bounds the queueing
    /// delay under overload.
    pub queue_jobs: usize,
    /// The most ranking requests worked on at once; more wait for a place. The work is mostly
    /// CPU, so beyond a few per core more concurrency only lengthens every request (Little's
    /// law). The limit in force adapts between `min_in_flight` and this (see
    /// `latency_tolerance`).
    pub max_in_flight: usize,
    /// The adaptive limit never goes below this.
    pub min_in_flight: usize,
    /// How many times the uncontended latency (requests that ran nearly alone) the median
    /// latency of admitted requests may reach, while the limit is reached, before the limit
    /// shrinks: the latency spent for throughput under overload.
    pub latency_tolerance: f64,
    /// How long a ranking request may wait for a place before it is refused with 429 and
    /// `Retry-After` (milliseconds): overload sheds instead of queueing.
    pub admission_wait_ms: u64,
    /// How long a request may take when it names no deadline (milliseconds).
    pub default_deadline_ms: u64,
    /// The most candidates one request may rank.
    pub max_candidates: usize,
    /// How many ranked candidates the product shows. A request without `top_k` gets this many
    /// back; only these are impressions (given ids, logged). A request may ask for more with
    /// `top_k` (to merge with other sources, say): those past the slots are scored, not logged.
    pub slots: u32,
    /// How far a request's or a click's `event_time_ms` may be ahead of this server's clock, in
    /// seconds, before it is refused (400): it allows for callers' clocks running ahead. A
    /// far-future time would be logged and upset the feature store's event-time windows.
    pub max_event_time_skew_secs: u64,
    /// The largest request body accepted (bytes); larger ones get 413.
    pub max_body_bytes: usize,
    /// How long a client has to send a request's headers, counted from when it connected or
    /// its previous request ended (milliseconds): also how long an idle connection is kept.
    /// Shorter frees the places of silent clients sooner; longer keeps more connections warm.
    pub header_timeout_ms: u64,
    /// How long a client has to send a request's whole body (milliseconds), else 408.
    pub body_timeout_ms: u64,
    /// The most connections open at once; at the limit, the oldest without a request in
    /// progress is closed to make room. 0: the file limit (raised to its hard limit at start)
    /// less 256 for the process's other files.
    pub max_connections: usize,
    /// Impressions buffered for Kafka beyond the producer's own queue; when Kafka is down and
    /// it is full, the oldest are dropped (and counted) so serving never waits on logging.
    pub impression_buffer: usize,
    /// How often the registry is checked for a new version of the followed alias
    /// (milliseconds). A new version is loaded and warmed beside the serving one, then swapped in.
    pub registry_poll_ms: u64,
    /// On SIGTERM or SIGINT: how long the server waits for the requests in flight, and then
    /// for the impression log to reach the broker, each, before it exits anyway (milliseconds).
    pub shutdown_timeout_ms: u64,
    /// The bearer token the admin API (`/admin/rollout…`) requires; empty: the admin API is
    /// off. Better set from the environment (`ADRANK_SERVING__ADMIN_TOKEN`) than in a file.
    /// Never printed.
    #[serde(skip_serializing)]
    pub admin_token: crate::admin::AdminToken,
    /// At a rollout's shadow step: the share of production's requests the candidate also
    /// scores, after the reply (0 to 1; 0: none).
    pub shadow_sample: f64,
    /// Copies scored at once; a sampled request beyond them is dropped (and counted), so the
    /// shadow never queues work behind production's.
    pub shadow_max_in_flight: usize,
}

impl Default for ServingConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_listen: None,
            max_batch_rows: 1024,
            max_queue_delay_ms: 2,
            queue_jobs: 256,
            max_in_flight: 64,
            min_in_flight: 2,
            latency_tolerance: 3.0,
            admission_wait_ms: 5,
            default_deadline_ms: 100,
            max_candidates: 1000,
            slots: 5,
            max_event_time_skew_secs: 600,
            max_body_bytes: 1 << 20,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            max_connections: 0,
            impression_buffer: 100_000,
            registry_poll_ms: 5_000,
            shutdown_timeout_ms: 30_000,
            admin_token: crate::admin::AdminToken::default(),
            shadow_sample: 0.1,
            shadow_max_in_flight: 2,
        }
    }
}

impl ServingConfig {
    /// Every problem in this section; empty when it is usable.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if !(1..=1_000_000).contains(&self.max_batch_rows) {
            problems.push(ConfigProblem::new(
                "max_batch_rows",
                format!("is {}; expected 1 to 1000000", self.max_batch_rows),
            ));
        }
        if self.max_queue_delay_ms > 10_000 {
            problems.push(ConfigProblem::new(
                "max_queue_delay_ms",
                format!("is {}; expected at most 10000 (ten seconds)", self.max_queue_delay_ms),
            ));
        }
        if !(0.0..=1.0).contains(&self.shadow_sample) {
            problems.push(ConfigProblem::new(
                "shadow_sample",
                format!("is {}; expected a share from 0 to 1", self.shadow_sample),
            ));
        }
        if self.shadow_max_in_flight == 0 {
            problems.push(ConfigProblem::new("shadow_max_in_flight", "is 0; expected at least 1"));
        }
        if self.queue_jobs == 0 {
            problems.push(ConfigProblem::new("queue_jobs", "is 0; expected at least 1"));
        }
        if self.max_in_flight == 0 {
            problems.push(ConfigProblem::new("max_in_flight", "is 0; expected at least 1"));
        }
        if self.min_in_flight == 0 || self.min_in_flight > self.max_in_flight {
            problems.push(ConfigProblem::new(
                "min_in_flight",
                format!("is {}; expected 1 to max_in_flight ({})", self.min_in_flight, self.max_in_flight),
            ));
        }
        if !(self.latency_tolerance.is_finite() && self.latency_tolerance >= 1.0) {
            problems.push(ConfigProblem::new(
                "latency_tolerance",
                format!("is {}; expected a number of at least 1", self.latency_tolerance),
            ));
        }
        if self.admission_wait_ms > 60_000 {
            problems.push(ConfigProblem::new(
                "admission_wait_ms",
                format!("is {}; expected at most 60000", self.admission_wait_ms),
            ));
        }
        if !(1..=60_000).contains(&self.default_deadline_ms) {
            problems.push(ConfigProblem::new(
                "default_deadline_ms",
                format!("is {}; expected 1 to 60000", self.default_deadline_ms),
            ));
        }
        if !(1..=adrank_featurestore::online::reader::MAX_ADS).contains(&self.max_candidates) {
            problems.push(ConfigProblem::new(
                "max_candidates",
                format!("is {}; expected 1 to {}", self.max_candidates, adrank_featurestore::online::reader::MAX_ADS),
            ));
        }
        if !(1..=u32::from(u16::MAX)).contains(&self.slots) {
            problems.push(ConfigProblem::new("slots", format!("is {}; expected 1 to 65535", self.slots)));
        }
        if self.registry_poll_ms < 100 {
            problems.push(ConfigProblem::new(
                "registry_poll_ms",
                format!("is {}; expected at least 100", self.registry_poll_ms),
            ));
        }
        for (key, value) in [("header_timeout_ms", self.header_timeout_ms), ("body_timeout_ms", self.body_timeout_ms)] {
            if !(1..=600_000).contains(&value) {
                problems.push(ConfigProblem::new(key, format!("is {value}; expected 1 to 600000 (ten minutes)")));
            }
        }
        if self.max_body_bytes < 1024 {
            problems.push(ConfigProblem::new(
                "max_body_bytes",
                format!("is {}; expected at least 1024", self.max_body_bytes),
            ));
        }
        problems
    }

    /// The connection limit in force: `max_connections`, or the default from the file limit.
    pub fn connection_limit(&self) -> usize {
        if self.max_connections == 0 { crate::connections::default_max_connections() } else { self.max_connections }
    }

    /// The event-time skew allowed, in milliseconds.
    pub fn max_event_time_skew_ms(&self) -> i64 {
        (self.max_event_time_skew_secs as i64).saturating_mul(1000)
    }

    /// The admission limiter's settings.
    pub fn admission(&self) -> crate::admission::AdmissionConfig {
        crate::admission::AdmissionConfig {
            min_in_flight: self.min_in_flight,
            max_in_flight: self.max_in_flight,
            wait: Duration::from_millis(self.admission_wait_ms),
            latency_tolerance: self.latency_tolerance,
        }
    }

    /// The batcher settings.
    pub fn batcher(&self) -> BatcherConfig {
        BatcherConfig {
            max_batch_rows: self.max_batch_rows,
            max_queue_delay: Duration::from_millis(self.max_queue_delay_ms),
            queue_jobs: self.queue_jobs,
        }
    }
}
