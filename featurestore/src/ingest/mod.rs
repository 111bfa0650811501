//! The ingester: a Kafka consumer group member that applies impressions, clicks, profiles and
//! catalog records to the Redis online store and joins impressions with clicks into the
//! Parquet training log, each event taking effect exactly once.
//!
//! # How a round goes
//!
//! ```text
//! poll up to max_batch_events (or max_batch_wait)
//!   -> drop the partitions the group took away
//!   -> load new partitions' state: Redis watermark, training-log checkpoint (seek back if needed)
//!   -> decode; refusals go to the dead-letter topic (confirmed before anything moves past them)
//!   -> fold into per-partition Updates and feed the partition's Joiner
//!   -> wait for the Redis apply of the round before the previous one (it ran while this
//!      round was read and decoded); the previous round's may still run
//!   -> queue this round's behind it: one script call, per partition updates + watermark
//!      (expecting the watermark the apply before it leaves), atomically
//!   -> record finished training-log commits; start due ones in the background (Parquet
//!      files, then the commit record; one at a time per partition)
//!   -> commit Kafka offsets: the lower of what Redis (as settled) and the log still need
//! ```
//!
//! Redis and the training log are the truth about progress; Kafka's committed offsets only say
//! where to start reading, and are never ahead of either. A replay skips what Redis's watermark
//! and the log's checkpoint already hold, so a crash anywhere repeats no effect.
//!
//! Impressions and clicks with the same partition number must go to the same member: the
//! consumer uses the range assignor, which gives equal partition numbers of equally partitioned
//! topics to the same member (the config check keeps the two topics equally partitioned).

mod config;
mod dead_letter;
mod partition;
mod round;
pub mod standing;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    message::BorrowedMessage,
};

pub use config::IngestConfig;
pub use dead_letter::Refusal;

use crate::{Error, KafkaConfig, RedisConfig, Result, kafka, metrics, online::Writer};
use adrank_contracts::training_log::{Checkpoint, Commit, Joiner, TrainingLog};
use dead_letter::DeadLetters;

/// Which topic a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Impressions,
    Clicks,
    Users,
    Ads,
}

/// Options of one run beyond the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop once no message has arrived for this long while the member held partitions, the
    /// consumer is at the end of every assigned partition, and everything read is committed. A
    /// member the group has taken its partitions from, waiting for new ones, is not idle: on a
    /// loaded machine a rebalance can outlast the idle span, and a member that left then would
    /// leave the group mid-rebalance (its close then waits on the rebalance) with work undone.
    pub exit_when_idle: Option<Duration>,
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Events applied to Redis, per topic kind: impressions, clicks, users, ads.
    pub applied: [u64; 4],
    pub dead_letters: u64,
    pub examples: u64,
    pub late_clicks: u64,
    pub orphan_clicks: u64,
    pub fenced: u64,
}

/// Partitions the group took from this member, recorded in the rebalance callback and acted
/// on by the round loop.
#[derive(Debug)]
struct GroupContext {
    revoked: Mutex<Vec<(String, i32)>>,
    /// Whether this member holds partitions now (assigned some, none revoked since): idleness
    /// counts only then.
    assigned: std::sync::atomic::AtomicBool,
    /// Messages behind the ends of the assigned partitions, from the last statistics report
    /// (-1: unknown, such as before any report).
    lag: std::sync::atomic::AtomicI64,
}

impl Default for GroupContext {
    fn default() -> Self {
        Self { revoked: Mutex::default(), assigned: Default::default(), lag: std::sync::atomic::AtomicI64::new(-1) }
    }
}

impl ClientContext for GroupContext {
    /// librdkafka's statistics carry each partition's lag, computed from the high watermarks
    /// its fetches return: no extra broker requests (tansu's sqlite engine answers offset
    /// requests slowly).
    fn stats(&self, statistics: rdkafka::Statistics) {
        let (mut total, mut unknown) = (0i64, false);
        for (topic, stats) in &statistics.topics {
            for (&partition, stats) in &stats.partitions {
                // Partition -1 is librdkafka's internal "unassigned" partition.
                if partition < 0 || stats.fetch_state == "none" {
                    continue;
                }
                // Behind the end from where the ingester reads: its next offset once it has read
                // something, else where it starts (the committed offset, or the beginning).
                let position =
                    [stats.app_offset, stats.committed_offset, stats.lo_offset].into_iter().find(|o| *o >= 0);
                match position {
                    Some(position) if stats.hi_offset >= 0 => {
                        let lag = (stats.hi_offset - position).max(0);
                        metrics::lag(topic, partition, lag);
                        total = total.saturating_add(lag);
                    }
                    _ => unknown = true,
                }
            }
        }
        let total = if unknown { -1 } else { total };
        self.lag.store(total, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            // The eager protocol (librdkafka's default) revokes everything before reassigning.
            self.assigned.store(false, std::sync::atomic::Ordering::Relaxed);
            let mut revoked = self.revoked.lock().expect("never poisoned: no panics while held");
            revoked.extend(list.elements().iter().map(|e| (e.topic().to_string(), e.partition())));
        }
    }

    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            tracing::info!(partitions = list.count(), "group assignment");
            if list.count() > 0 {
                self.assigned.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// One partition pair's training-log state.
#[derive(Debug)]
struct LogState {
    joiner: Joiner,
    next_seq: u64,
    committed: Checkpoint,
    last_commit: Instant,
    /// The commit under way, if any (sequence `next_seq`).
    committing: Option<tokio::task::JoinHandle<Result<Commit>>>,
    /// Commits since the partition's newest snapshot.
    since_snapshot: usize,
    /// The compaction under way, if any: how many commits it folded into a snapshot.
    compacting: Option<tokio::task::JoinHandle<Result<usize>>>,
}

/// A feature-store ingester.
pub struct Ingester {
    consumer: Arc<StreamConsumer<GroupContext>>,
    writer: Writer,
    log: TrainingLog,
    dead_letters: DeadLetters,
    kafka: KafkaConfig,
    config: IngestConfig,
    topics: HashMap<String, Kind>,
    names: [String; 4],
    /// Where each partition's events stand in Redis (a partition pair's log is in `logs`).
    progress: partition::Progress,
    logs: HashMap<i32, LogState>,
    /// Log commits started for partitions since forgotten or taken away: awaited before such a
    /// partition's log is loaded again, so that a commit which lands is read there, not met
    /// later as another member's.
    abandoned_commits: HashMap<i32, tokio::task::JoinHandle<Result<Commit>>>,
    /// The last round's apply, while Redis runs it.
    in_flight: VecDeque<round::InFlight>,
    /// Ends when the latest round's apply task has: the next one starts its calls after it.
    applying: Option<tokio::sync::oneshot::Receiver<()>>,
    totals: Totals,
    /// The context of each traced impression waiting in a join, by partition and impression id:
    /// its example's span continues the trace once the window closes (at most
    /// [`round::TRACED_WAITING`]).
    traced_waiting: HashMap<(i32, String), crate::trace_context::Carried>,
}

impl std::fmt::Debug for Ingester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingester").field("group", &self.kafka.consumer_group).finish_non_exhaustive()
    }
}

impl Ingester {
    /// Connects to Redis, opens the training log and joins the consumer group.
    pub async fn new(kafka_config: &KafkaConfig, redis: &RedisConfig, config: &IngestConfig) -> Result<Self> {
        let writer = Writer::connect(redis)
            .await?
            .dedup_clicks_for(config.click_dedup_ms())
            .records_per_call(config.max_apply_records);
        let log = TrainingLog::open(&config.training_log)?;
        let dead_letters = DeadLetters::new(kafka_config)?;
        let consumer: StreamConsumer<GroupContext> = kafka::client_config(kafka_config)
            .set("group.id", &kafka_config.consumer_group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            // The group's rebalance timeout: how long a join waits for members that do not come
            // back (the default, 5 minutes, stalled the survivors of a killed member on tansu).
            // Also the longest allowed gap between polls, so it keeps a minute's margin for a
            // slow round (a debug build on a loaded machine took over 12 s once).
            .set("max.poll.interval.ms", (config.session_timeout_ms * 2).max(60_000).to_string())
            .set("statistics.interval.ms", "1000")
            // A caught-up consumer's fetch waits this long for new data at most: the default
            // (500 ms) would add up to half a second to freshness.
            .set("fetch.wait.max.ms", config.fetch_wait_ms().to_string())
            .create_with_context(GroupContext::default())
            .map_err(|source| kafka_error(kafka_config, "creating the consumer", source))?;
        let topics = &kafka_config.topics;
        let names = [&topics.impressions, &topics.clicks, &topics.users, &topics.ads].map(|t| t.name.clone());
        consumer
            .subscribe(&names.iter().map(String::as_str).collect::<Vec<_>>())
            .map_err(|source| kafka_error(kafka_config, "subscribing", source))?;
        let kinds = [Kind::Impressions, Kind::Clicks, Kind::Users, Kind::Ads];
        Ok(Self {
            consumer: Arc::new(consumer),
            writer,
            log,
            dead_letters,
            kafka: kafka_config.clone(),
            config: config.clone(),
            topics: names.iter().cloned().zip(kinds).collect(),
            names,
            progress: partition::Progress::default(),
            logs: HashMap::new(),
            abandoned_commits: HashMap::new(),
            in_flight: VecDeque::new(),
            applying: None,
            totals: Totals::default(),
            traced_waiting: HashMap::new(),
        })
    }

    /// Runs until `shutdown` completes (or, with `exit_when_idle`, until idle), then commits
    /// what it holds and leaves the group.
    pub async fn run(mut self, options: RunOptions, shutdown: impl Future<Output = ()>) -> Result<Totals> {
        tokio::pin!(shutdown);
        let mut last_message = Instant::now();
        // Messages are decoded where librdkafka holds them, so a round's messages borrow from
        // this handle, not from `self` (copying each out, `detach`, was 5% of the ingester's
        // CPU).
        let consumer = Arc::clone(&self.consumer);
        let result = loop {
            let batch = tokio::select! {
                () = &mut shutdown => break Ok(()),
                batch = poll(&consumer, &self.config, &self.kafka) => batch,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => break Err(e),
            };
            // Idleness counts only while partitions are held: joining the group, or a
            // rebalance, may take a while. A partition this round loads again is read again.
            if !batch.is_empty()
                || self.progress.loading()
                || !self.consumer.context().assigned.load(std::sync::atomic::Ordering::Relaxed)
            {
                last_message = Instant::now();
            }
            // Idle: nothing read for a while and nothing left to read (a slow broker's pause is
            // not the end of the data).
            let idle = options.exit_when_idle.is_some_and(|idle| last_message.elapsed() >= idle)
                && self.consumer.context().lag.load(std::sync::atomic::Ordering::Relaxed) == 0;
            if let Err(e) = self.round(batch, idle).await {
                break Err(e);
            }
            // An idle round commits the log in full. A commit that found another member's in
            // its place forgot the pair, which has to be read again from that commit's
            // checkpoint before this member may leave.
            if idle
                && self.in_flight.is_empty()
                && !self.progress.loading()
                && self.logs.values().all(|l| l.joiner.closed() == 0)
            {
                break Ok(());
            }
        };
        if result.is_ok() {
            // A last commit of everything applied and closed, so a clean stop replays nothing.
            self.settle(0).await?;
            self.commit_logs(true).await?;
            self.commit_offsets();
        }
        drop(consumer);
        let Self { consumer, totals, .. } = self;
        // Closing a consumer blocks until it has left the group: not on the async runtime, and
        // this task holds the last reference.
        let _ = tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
        })
        .await;
        result.map(|()| totals)
    }

    /// Drops what the group took away; returns the revoked set.
    fn take_revoked(&mut self) -> HashSet<(Kind, i32)> {
        let revoked =
            std::mem::take(&mut *self.consumer.context().revoked.lock().expect("never poisoned: no panics while held"));
        let revoked: HashSet<(Kind, i32)> =
            revoked.into_iter().filter_map(|(topic, p)| Some((*self.topics.get(&topic)?, p))).collect();
        for &(kind, partition) in &revoked {
            self.progress.revoke((kind, partition));
            if matches!(kind, Kind::Impressions | Kind::Clicks) {
                self.drop_log(partition);
            }
        }
        if !revoked.is_empty() {
            tracing::info!(partitions = revoked.len(), "partitions revoked");
        }
        revoked
    }

    fn topic(&self, kind: Kind) -> &str {
        &self.names[kind as usize]
    }

    /// Seeks one partition back to `offset` (`None`: its beginning).
    fn seek(&self, kind: Kind, partition: i32, offset: Option<i64>) -> Result<()> {
        let offset = offset.map_or(Offset::Beginning, Offset::Offset);
        self.consumer
            .seek(self.topic(kind), partition, offset, Duration::from_secs(10))
            .map_err(|e| kafka_error(&self.kafka, "seeking back to unapplied events", e))
    }

    /// Commits Kafka offsets: per partition, the lowest offset Redis or the log still needs.
    fn commit_offsets(&mut self) {
        let changed = self.progress.offsets_to_commit(|key| log_needs(&self.logs, key));
        let mut list = TopicPartitionList::new();
        for &((kind, partition), offset) in &changed {
            let _ = list.add_partition_offset(self.topic(kind), partition, Offset::Offset(offset));
        }
        if list.count() == 0 {
            return;
        }
        // Asynchronous: Kafka's offsets are a hint where to start; Redis and the log are the
        // truth, so a lost commit only means a longer replay.
        match self.consumer.commit(&list, CommitMode::Async) {
            Ok(()) => {
                for (key, offset) in changed {
                    self.progress.committed(key, offset);
                }
            }
            Err(e) => tracing::warn!(error = %e, "committing Kafka offsets failed; will retry"),
        }
    }
}

/// The oldest offset of a partition the training log still needs (none for the topics it does
/// not read, or before its pair's log is loaded).
fn log_needs(logs: &HashMap<i32, LogState>, (kind, partition): partition::Key) -> Option<i64> {
    let log = &logs.get(&partition)?.committed;
    match kind {
        Kind::Impressions => Some(log.impressions_resume),
        Kind::Clicks => Some(log.clicks_resume),
        Kind::Users | Kind::Ads => None,
    }
}

/// Reads up to `max_batch_events`, waiting at most `max_batch_wait` after the first.
async fn poll<'c>(
    consumer: &'c StreamConsumer<GroupContext>,
    config: &IngestConfig,
    kafka: &KafkaConfig,
) -> Result<Vec<BorrowedMessage<'c>>> {
    let mut batch = Vec::new();
    let first = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    match first {
        Err(_) => return Ok(batch),
        Ok(message) => batch.push(message.map_err(|e| kafka_error(kafka, "reading", e))?),
    }
    let deadline = tokio::time::Instant::now() + config.max_batch_wait();
    while batch.len() < config.max_batch_events {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(message) => batch.push(message.map_err(|e| kafka_error(kafka, "reading", e))?),
        }
    }
    Ok(batch)
}

fn kafka_error(config: &KafkaConfig, action: &'static str, source: rdkafka::error::KafkaError) -> Error {
    Error::Kafka { brokers: config.brokers.clone(), action, source }
}
