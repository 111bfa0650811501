//! The `[ingest]` config section: the ingester's batching, the click attribution window and the
//! training log's location.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use adrank_contracts::ConfigProblem;

/// How the ingester batches, joins and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Where the training log's Parquet files go: a local folder, file:///path, or
    /// s3://bucket/prefix. The trainer reads it from here.
    pub training_log: String,
    /// A click counts for an impression when it happens at most this many seconds after it (in
    /// event time). Longer windows catch more slow clicks but hold each impression longer
    /// before its training example is written.
    pub attribution_window_secs: u64,
    /// How far out of order clicks may arrive, in event time. An impression's window closes
    /// only once a click this much later than the window's end has been read from its
    /// partition, so its label does not depend on how far the ingester had read. Clicks later
    /// than that are counted as late, never silently dropped.
    pub allowed_lateness_secs: u64,
    /// How far an event time may be ahead of when its message was published (the broker's
    /// timestamp, capped at the ingester's clock), in seconds; later ones are dead-lettered. It
    /// allows for producers' clocks running ahead; a far-future click would close every waiting
    /// window of its partition at once, a far-future impression would never close.
    pub max_event_time_skew_secs: u64,
    /// The most events one poll round applies in one Redis round trip. Bigger rounds write
    /// more efficiently; smaller ones make events visible sooner.
    pub max_batch_events: usize,
    /// The most records (entities, and click ids) one Redis script call writes: a round is
    /// applied in calls of at most this many, one after another, so that a read waits behind
    /// one short call rather than a whole round. Smaller calls aggregate less: Redis spends more
    /// per event, and the top ingest rate falls (BENCHMARKS.md, "a ninth machine").
    pub max_apply_records: usize,
    /// The longest a poll round waits for more events before applying what it has, in
    /// milliseconds: the bound on how stale Redis is when traffic is light.
    pub max_batch_wait_ms: u64,
    /// How often closed training examples are committed to Parquet, in milliseconds. Each
    /// commit writes one file per partition and event hour, so longer intervals mean fewer,
    /// bigger files and a longer replay after a crash.
    pub log_commit_interval_ms: u64,
    /// Commit early when this many closed examples are waiting.
    pub log_commit_examples: usize,
    /// Compact a partition's log once it has this many commits since its last snapshot: one
    /// snapshot stands for them, their small files merged per hour, so that loading the
    /// partition reads one snapshot and at most this many commits however old the log is.
    pub log_compact_commits: usize,
    /// Kafka's consumer session timeout, in milliseconds: how long a silent ingester keeps its
    /// partitions before the group hands them to another.
    pub session_timeout_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            training_log: ".adrank/training-log".into(),
            attribution_window_secs: 15 * 60,
            allowed_lateness_secs: 10 * 60,
            max_event_time_skew_secs: 10 * 60,
            max_batch_events: 5_000,
            max_apply_records: 100,
            max_batch_wait_ms: 50,
            log_commit_interval_ms: 5_000,
            log_commit_examples: 200_000,
            log_compact_commits: 720,
            session_timeout_ms: 10_000,
        }
    }
}

impl IngestConfig {
    /// The attribution window in milliseconds.
    pub fn window_ms(&self) -> i64 {
        (self.attribution_window_secs as i64).saturating_mul(1000)
    }

    /// How long the online store remembers a counted click id: a retried click counts once
    /// within the attribution window and its lateness.
    pub fn click_dedup_ms(&self) -> i64 {
        self.window_ms().saturating_add(self.lateness_ms())
    }

    /// The allowed lateness in milliseconds.
    pub fn lateness_ms(&self) -> i64 {
        (self.allowed_lateness_secs as i64).saturating_mul(1000)
    }

    /// The event-time skew allowed, in milliseconds.
    pub fn max_event_time_skew_ms(&self) -> i64 {
        (self.max_event_time_skew_secs as i64).saturating_mul(1000)
    }

    /// The longest wait for a poll round.
    pub fn max_batch_wait(&self) -> Duration {
        Duration::from_millis(self.max_batch_wait_ms)
    }

    /// The consumer's `fetch.wait.max.ms`: the round wait, within librdkafka's bounds. A fetch
    /// waits this long at most for data; tansu (0.6) holds every fetch this long even when it
    /// has data to send, up to 5 MiB per answer, so this also bounds what a consumer can read
    /// from it (librdkafka's default, 500 ms, read 112k events/s from a memory tansu where 50 ms
    /// read 413k/s and 5 ms 1.1M/s: BENCHMARKS.md).
    pub fn fetch_wait_ms(&self) -> u64 {
        self.max_batch_wait_ms.clamp(1, 500)
    }

    /// The training-log commit interval.
    pub fn log_commit_interval(&self) -> Duration {
        Duration::from_millis(self.log_commit_interval_ms)
    }

    /// Every problem in this section; empty when it is usable.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.training_log.trim().is_empty() {
            problems.push(ConfigProblem::new("training_log", "is empty; expected a folder, file:// or s3:// location"));
        }
        let positive = [
            ("attribution_window_secs", self.attribution_window_secs),
            ("max_batch_events", self.max_batch_events as u64),
            ("max_apply_records", self.max_apply_records as u64),
            ("max_batch_wait_ms", self.max_batch_wait_ms),
            ("log_commit_interval_ms", self.log_commit_interval_ms),
            ("log_commit_examples", self.log_commit_examples as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                problems.push(ConfigProblem::new(key, "is 0; expected at least 1"));
            }
        }
        if self.log_compact_commits < 2 {
            problems.push(ConfigProblem::new(
                "log_compact_commits",
                format!("is {}; expected at least 2 (a snapshot stands for several commits)", self.log_compact_commits),
            ));
        }
        if !(6_000..=300_000).contains(&self.session_timeout_ms) {
            problems.push(ConfigProblem::new(
                "session_timeout_ms",
                format!("is {}; Kafka brokers accept 6000 to 300000", self.session_timeout_ms),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_have_no_problems() {
        assert_eq!(IngestConfig::default().problems(), vec![]);
    }

    #[test]
    fn every_problem_is_named() {
        let config = IngestConfig {
            training_log: " ".into(),
            max_batch_events: 0,
            session_timeout_ms: 10,
            ..Default::default()
        };
        let keys: Vec<String> = config.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["training_log", "max_batch_events", "session_timeout_ms"]);
    }
}
