//! One round of the ingester: load new partitions, decode, apply to Redis, commit the log.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Instant,
};

use rdkafka::{Message as _, message::BorrowedMessage};

use super::{
    Ingester, Kind, LogState, Refusal,
    partition::{Read as Progress, Send, Settled},
};
use crate::{
    Error, Result, metrics,
    online::{Outcome, PartitionBatch, Updates},
};
use adrank_contracts::{
    events::{AdRecord, Click, Event, Impression, UserProfile},
    training_log::{Commit, CommitRequest, Example, Joiner},
};

/// A decoded message.
enum Decoded {
    Impression(Impression),
    Click(Click),
    User(UserProfile),
    Ad(AdRecord),
}

/// The clock event times are bounded against: how far ahead of it they may be, and now.
#[derive(Clone, Copy)]
struct Clock {
    now_ms: i64,
    skew_ms: i64,
}

fn decode(kind: Kind, message: &BorrowedMessage<'_>, clock: Clock) -> Result<Decoded, Refusal> {
    let payload = message.payload().filter(|p| !p.is_empty()).ok_or_else(Refusal::empty)?;
    // When the message was published, as the broker records it, is what the bound is measured
    // from: a replay reads the same timestamp, so it decides as the first read did. The
    // ingester's clock caps it, so a producer's clock set ahead cannot widen the bound.
    let reference = match message.timestamp().to_millis() {
        Some(published) if published >= 0 => published.min(clock.now_ms),
        _ => clock.now_ms,
    };
    let read = Read { payload, key: message.key(), reference, skew_ms: clock.skew_ms };
    Ok(match kind {
        Kind::Impressions => Decoded::Impression(read.event()?),
        Kind::Clicks => Decoded::Click(read.event()?),
        Kind::Users => Decoded::User(read.event()?),
        Kind::Ads => Decoded::Ad(read.event()?),
    })
}

/// One message to decode, with what its event must agree with.
struct Read<'a> {
    payload: &'a [u8],
    key: Option<&'a [u8]>,
    reference: i64,
    skew_ms: i64,
}

impl Read<'_> {
    fn event<E: Event>(&self) -> Result<E, Refusal> {
        let event = E::decode(self.payload).map_err(|e| Refusal::event(&e))?;
        if self.key != Some(event.key().as_bytes()) {
            return Err(Refusal::key(event.key(), self.key));
        }
        adrank_contracts::events::not_ahead("event_time_ms", event.event_time_ms(), self.reference, self.skew_ms)
            .map_err(|e| Refusal::future(&e))?;
        Ok(event)
    }
}

/// Applies a round may find in flight when it sends its own, its own included: while Redis runs
/// one, the next is queued behind it, so Redis never waits for a round to be decoded.
const APPLIES_QUEUED: usize = 2;

/// Traced impressions waiting in joins, at most: beyond, an impression's example is not traced.
pub(super) const TRACED_WAITING: usize = 10_000;

/// Messages decoded between yields to the runtime.
const YIELD_EVERY: usize = 256;

/// The span of an event that arrived with a trace context, while this process exports spans:
/// a child of the span that sent it (serving's impression log, for an impression).
fn traced(message: &BorrowedMessage<'_>) -> Option<tracing::Span> {
    if !crate::trace_context::exporting() {
        return None;
    }
    let headers = message.headers()?;
    let span = tracing::info_span!(
        "ingest.event",
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        outcome = tracing::field::Empty,
    );
    crate::trace_context::adopt_from_kafka(&span, headers).then_some(span)
}

/// The spans of the closed examples of traced impressions, each a child of its impression's
/// `ingest.event` span, ending once the log commit that writes them has.
fn example_spans(
    waiting: &mut HashMap<(i32, String), crate::trace_context::Carried>,
    partition: i32,
    examples: &[Example],
) -> Vec<tracing::Span> {
    if waiting.is_empty() {
        return Vec::new();
    }
    let mut spans = Vec::new();
    for example in examples {
        let Some(carried) = waiting.remove(&(partition, example.impression.impression_id.clone())) else { continue };
        let span = tracing::info_span!(
            "training_example",
            partition,
            offset = example.offset,
            clicks = example.clicks,
            outcome = tracing::field::Empty,
        );
        crate::trace_context::adopt(&span, carried.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
        spans.push(span);
    }
    spans
}

/// A partition's share of one round, in chunks of about `max_apply_records` records, each
/// applied as a batch of its own so that no script call holds Redis for long.
#[derive(Default)]
struct Share {
    chunks: Vec<Chunk>,
}

#[derive(Default)]
struct Chunk {
    updates: Updates,
    event_times: Vec<i64>,
    /// The spans of its traced events, ended once the chunk is in Redis.
    spans: Vec<tracing::Span>,
    /// The offset the next chunk starts at: the watermark this one leaves (`None` for the last,
    /// which leaves where the round stopped reading).
    until: Option<i64>,
}

impl Share {
    /// The chunk the event at `offset` goes in: a new one once the current one is full.
    fn chunk(&mut self, offset: i64, max_records: usize) -> &mut Chunk {
        if self.chunks.last().is_none_or(|c| c.updates.records() >= max_records) {
            if let Some(full) = self.chunks.last_mut() {
                full.until = Some(offset);
            }
            self.chunks.push(Chunk::default());
        }
        self.chunks.last_mut().expect("one was pushed if there was none")
    }
}

/// A round's apply, running in Redis while the next round is read.
pub(super) struct InFlight {
    task: tokio::task::JoinHandle<Result<(Vec<Outcome>, i64)>>,
    batches: Vec<PendingBatch>,
}

/// What settling one partition batch needs to know.
struct PendingBatch {
    kind: Kind,
    partition: i32,
    sent: Send,
    events: usize,
    event_times: Vec<i64>,
}

impl Ingester {
    pub(super) async fn round(&mut self, batch: Vec<BorrowedMessage<'_>>, idle: bool) -> Result<()> {
        let started = Instant::now();
        let messages = batch.len();
        let revoked = self.take_revoked();
        let batch: Vec<(Kind, BorrowedMessage<'_>)> = batch
            .into_iter()
            .filter_map(|m| Some((*self.topics.get(m.topic())?, m)))
            // A revoked partition's messages are its new owner's to apply.
            .filter(|(kind, m)| !revoked.contains(&(*kind, m.partition())))
            .collect();
        let sought = self.load(&batch).await?;

        let prefix = self.writer.prefix().to_string();
        let clock = Clock { now_ms: adrank_contracts::events::now_ms(), skew_ms: self.config.max_event_time_skew_ms() };
        let mut shares: BTreeMap<(Kind, i32), Share> = BTreeMap::new();
        let max_records = self.config.max_apply_records;
        let mut deliveries = Vec::new();
        for (i, (kind, message)) in batch.into_iter().enumerate() {
            // Decoding a round is tens of milliseconds of CPU: yield now and then, so that the
            // apply task and the Redis connection's driver (woken on this worker, where only
            // this task's yields let them run) send the previous round's script meanwhile.
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
            let (partition, offset) = (message.partition(), message.offset());
            if sought.contains(&(kind, partition)) {
                continue;
            }
            let apply = match self.progress.read((kind, partition), offset) {
                Progress::Skip => continue,
                // Below the watermark, Redis (and the dead-letter topic) already have this event.
                Progress::Held => false,
                Progress::New => true,
            };
            let share = shares.entry((kind, partition)).or_default();
            // A refused event goes in a chunk too, with no updates: the watermark moves past it.
            let chunk = apply.then(|| share.chunk(offset, max_records));
            let source = (message.topic(), partition, offset);
            let traced = traced(&message);
            let entered = traced.as_ref().map(tracing::Span::enter);
            match decode(kind, &message, clock) {
                Err(refusal) => {
                    if let Some(span) = &traced {
                        span.record("outcome", "dead_letter");
                    }
                    if chunk.is_some() {
                        deliveries.push(self.dead_letters.send(source, message.payload(), &refusal)?);
                        self.totals.dead_letters += 1;
                    }
                    feed(self.logs.get_mut(&partition).map(|l| &mut l.joiner), kind, offset, None);
                }
                Ok(decoded) => {
                    if let (Some(span), Decoded::Impression(impression)) = (&traced, &decoded)
                        && self.logs.contains_key(&partition)
                        && self.traced_waiting.len() < TRACED_WAITING
                        && let Some(carried) = crate::trace_context::of(span)
                    {
                        self.traced_waiting.insert((partition, impression.impression_id.clone()), carried);
                    }
                    let joiner = self.logs.get_mut(&partition).map(|l| &mut l.joiner);
                    if let Some(chunk) = chunk {
                        fold(&mut chunk.updates, &mut chunk.event_times, &prefix, &decoded);
                        chunk.spans.extend(traced.clone());
                    }
                    // The join may refuse it (a duplicate id): out of the log, into the
                    // dead-letter topic, whether or not Redis had it already (the log's replay
                    // point and Redis's watermark differ).
                    if let Some(refusal) = feed(joiner, kind, offset, Some(decoded)) {
                        deliveries.push(self.dead_letters.send(source, message.payload(), &refusal)?);
                        self.totals.dead_letters += 1;
                    }
                }
            }
            drop(entered);
        }
        let decoded = started.elapsed();
        self.dead_letters.confirm(deliveries).await?;
        // Earlier rounds' applies ran in Redis while this round was read and decoded. The one
        // before this round's may stay in flight (this round's batches expect what it leaves);
        // any older one is waited for, so that Redis never holds more than a round's queue. A
        // round with nothing to apply settles them all: nothing would come to wait for them.
        let keep = if shares.is_empty() { 0 } else { APPLIES_QUEUED - 1 };
        self.settle(keep).await?;
        let settled = started.elapsed();
        self.start_apply(shares);
        // Let the apply task run at once: spawned from this worker, it waits in this worker's
        // next-task slot, which other workers do not take, until this task yields.
        tokio::task::yield_now().await;
        self.commit_logs(idle).await?;
        self.commit_offsets();
        if messages > 0 {
            tracing::debug!(
                messages,
                decode_ms = decoded.as_secs_f64() * 1e3,
                wait_apply_ms = (settled - decoded).as_secs_f64() * 1e3,
                log_ms = (started.elapsed() - settled).as_secs_f64() * 1e3,
                "round"
            );
        }
        Ok(())
    }

    /// Loads the state of partitions seen for the first time, and of those forgotten: the Redis
    /// watermark and the training-log checkpoint. Where they need events before the first one
    /// read (or, for a forgotten partition this round read nothing of, in any case), seeks back
    /// and returns the partition so this round skips its messages (they come again).
    async fn load(&mut self, batch: &[(Kind, BorrowedMessage<'_>)]) -> Result<HashSet<(Kind, i32)>> {
        // The first offset this round read of each, if any.
        let first = self.progress.to_load(batch.iter().map(|(kind, m)| ((*kind, m.partition()), m.offset())));
        let mut sought = HashSet::new();
        if first.is_empty() {
            return Ok(sought);
        }
        let keys: Vec<(Kind, i32)> = first.keys().copied().collect();
        let names: Vec<(&str, i32)> = keys.iter().map(|&(kind, p)| (self.names[kind as usize].as_str(), p)).collect();
        let watermarks = self.writer.watermarks(&names).await?;
        for &(kind, partition) in &keys {
            if matches!(kind, Kind::Impressions | Kind::Clicks) && !self.logs.contains_key(&partition) {
                self.load_log(partition).await?;
            }
        }
        for (&(kind, partition), applied) in keys.iter().zip(watermarks) {
            let log_needs = super::log_needs(&self.logs, (kind, partition));
            let first_read = first[&(kind, partition)];
            if let Some(to) = self.progress.loaded((kind, partition), applied, log_needs, first_read) {
                self.seek(kind, partition, to)?;
                sought.insert((kind, partition));
            }
            tracing::info!(
                topic = self.topic(kind),
                partition,
                ?applied,
                ?log_needs,
                ?first_read,
                "partition assigned"
            );
        }
        Ok(sought)
    }

    async fn load_log(&mut self, partition: i32) -> Result<()> {
        if let Some(task) = self.abandoned_commits.remove(&partition) {
            match task.await {
                Ok(Ok(commit)) => {
                    tracing::info!(partition, seq = commit.seq, "an abandoned log commit landed");
                    self.count(&commit);
                }
                Ok(Err(e)) => tracing::info!(partition, error = %e, "an abandoned log commit did not land"),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(Error::TaskStopped(e.to_string())),
            }
        }
        let commits = self.log.commits(partition).await?;
        let removed = self.log.remove_uncommitted(partition, &commits).await?;
        let latest = commits.last();
        if removed > 0 {
            tracing::info!(partition, removed, "removed training-log files of an unfinished commit");
        }
        let checkpoint = latest.map(|c| c.checkpoint.clone()).unwrap_or_default();
        let joiner = Joiner::new(partition, self.config.window_ms(), self.config.lateness_ms(), checkpoint.clone());
        self.logs.insert(
            partition,
            LogState {
                joiner,
                next_seq: latest.map_or(0, |c| c.seq + 1),
                committed: checkpoint,
                last_commit: Instant::now(),
                committing: None,
                since_snapshot: commits.iter().filter(|c| !c.is_snapshot()).count(),
                compacting: None,
            },
        );
        Ok(())
    }

    /// Forgets a partition pair (impressions, clicks and their log), to be loaded afresh.
    fn forget_pair(&mut self, partition: i32) {
        self.drop_log(partition);
        self.forget(Kind::Impressions, partition);
        self.forget(Kind::Clicks, partition);
    }

    /// Drops a partition's log state, keeping the commit it has under way (which cannot be
    /// called back: its record may be written already).
    pub(super) fn drop_log(&mut self, partition: i32) {
        self.traced_waiting.retain(|(waiting, _), _| *waiting != partition);
        if let Some(task) = self.logs.remove(&partition).and_then(|log| log.committing) {
            self.abandoned_commits.insert(partition, task);
        }
    }

    /// Forgets one partition, to be loaded afresh at the next round.
    fn forget(&mut self, kind: Kind, partition: i32) {
        self.progress.forget((kind, partition));
    }

    /// Starts applying every partition's share, in a task of its own, so that Redis runs this
    /// round's scripts while the next round is read and decoded (the two took turns before,
    /// each idle half the time). [`Ingester::settle`] collects the outcome.
    ///
    /// The applies still in flight need not have landed: a batch expects the watermark the
    /// latest of them leaves. Each round's task sends its script calls after the previous
    /// round's task has finished, and Redis runs one connection's scripts in the order they were
    /// sent, so they chain; and if one is fenced, a later batch of that partition expects a
    /// watermark Redis holds only if another member left exactly that one, and is fenced
    /// otherwise: either way, no offset is applied twice.
    fn start_apply(&mut self, shares: BTreeMap<(Kind, i32), Share>) {
        let mut batches = Vec::new();
        let mut pending = Vec::new();
        let mut spans = Vec::new();
        for ((kind, partition), share) in shares {
            for chunk in share.chunks {
                // None for a partition fenced while this round was decoded (its share goes with
                // it), or a replay of what Redis already holds.
                let Some(sent) = self.progress.send((kind, partition), chunk.until) else { continue };
                pending.push(PendingBatch {
                    kind,
                    partition,
                    sent,
                    events: chunk.updates.events(),
                    event_times: chunk.event_times,
                });
                batches.push((self.names[kind as usize].clone(), partition, sent.expected, sent.next, chunk.updates));
                spans.push(chunk.spans);
            }
        }
        if batches.is_empty() {
            return;
        }
        let mut writer = self.writer.clone();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let previous = self.applying.replace(finished);
        let task = tokio::spawn(async move {
            // Dropped when this task ends, however it ends: the next round's task goes on.
            let _done = done;
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let started = Instant::now();
            let borrowed: Vec<PartitionBatch<'_>> = batches
                .iter()
                .map(|(topic, partition, expected, next, updates)| PartitionBatch {
                    topic,
                    partition: *partition,
                    expected: *expected,
                    next: *next,
                    updates,
                })
                .collect();
            let outcomes = writer.apply(&borrowed).await?;
            metrics::write_seconds(started.elapsed().as_secs_f64());
            // A traced event's span ends here: visible in the online store, or fenced.
            for (outcome, spans) in outcomes.iter().zip(spans) {
                let word = if matches!(outcome, Outcome::Applied) { "applied" } else { "fenced" };
                spans.iter().for_each(|span| {
                    span.record("outcome", word);
                });
            }
            Ok((outcomes, adrank_contracts::events::now_ms()))
        });
        self.in_flight.push_back(InFlight { task, batches: pending });
    }

    /// Waits for the oldest applies in flight until at most `keep` are, and records their
    /// outcomes: applied partitions move their watermark, fenced ones are forgotten (to be
    /// loaded afresh).
    pub(super) async fn settle(&mut self, keep: usize) -> Result<()> {
        while self.in_flight.len() > keep {
            let InFlight { task, batches } = self.in_flight.pop_front().expect("more than `keep` are queued");
            let (outcomes, applied_ms) = match task.await {
                Ok(result) => result?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(Error::TaskStopped(e.to_string())),
            };
            for (batch, outcome) in batches.into_iter().zip(outcomes) {
                self.record(batch, outcome, applied_ms);
            }
        }
        Ok(())
    }

    /// Records one batch's outcome.
    fn record(&mut self, batch: PendingBatch, outcome: Outcome, applied_ms: i64) {
        let PendingBatch { kind, partition, sent, events, event_times } = batch;
        match self.progress.settle((kind, partition), sent, &outcome) {
            Settled::Applied | Settled::Stale { applied: true } => {
                // A stale batch's events are in Redis too (its load was forgotten after it was
                // sent): they count, though they move nothing here.
                self.totals.applied[kind as usize] += events as u64;
                metrics::applied(self.topic(kind), events);
                for time in event_times {
                    metrics::freshness_seconds((applied_ms - time).max(0) as f64 / 1000.0);
                }
            }
            // A fence of an earlier load says nothing about this one: a fenced batch changed
            // nothing, and this load read the watermark from Redis itself.
            Settled::Stale { applied: false } => {
                metrics::fenced(self.topic(kind));
                self.totals.fenced += 1;
            }
            Settled::Fenced => {
                metrics::fenced(self.topic(kind));
                self.totals.fenced += 1;
                tracing::warn!(
                    topic = self.topic(kind),
                    partition,
                    ?outcome,
                    "another ingester moved this partition's watermark; reloading it"
                );
                match kind {
                    Kind::Impressions | Kind::Clicks => self.forget_pair(partition),
                    Kind::Users | Kind::Ads => self.forget(kind, partition),
                }
            }
        }
    }

    /// Moves the training log on: records the commits that finished, and starts one for every
    /// partition whose commit is due (all, when `force`; then waits for them). A commit (Parquet
    /// encoding, files, the commit record) runs in a task of its own, at most one per partition,
    /// so that the rounds and Redis keep going meanwhile: a commit of every partition at once
    /// used to stop the ingester for about a second every five.
    pub(super) async fn commit_logs(&mut self, force: bool) -> Result<()> {
        self.finish_log_commits(force).await?;
        let partitions: Vec<i32> = self.logs.keys().copied().collect();
        for partition in partitions {
            let log = self.logs.get_mut(&partition).expect("listed just above");
            let due = force
                || log.joiner.closed() >= self.config.log_commit_examples
                || log.last_commit.elapsed() >= self.config.log_commit_interval();
            if !due || log.committing.is_some() {
                continue;
            }
            let (examples, checkpoint) = log.joiner.take_closed();
            if examples.is_empty() && checkpoint == log.committed {
                log.last_commit = Instant::now();
                continue;
            }
            let (late_clicks, orphan_clicks) = log.joiner.take_counts();
            let request = CommitRequest { partition, seq: log.next_seq, checkpoint, late_clicks, orphan_clicks };
            let training_log = self.log.clone();
            let spans = example_spans(&mut self.traced_waiting, partition, &examples);
            log.committing = Some(tokio::spawn(async move {
                let committed = training_log.commit(request, examples).await.map_err(Error::from);
                let outcome = if committed.is_ok() { "written" } else { "failed" };
                spans.iter().for_each(|span| {
                    span.record("outcome", outcome);
                });
                committed
            }));
        }
        if force {
            self.finish_log_commits(true).await?;
        }
        self.compact_logs(force).await
    }

    /// Compacts, in the background, the log of every partition with `log_compact_commits`
    /// commits since its last snapshot (one compaction at a time per partition), and records
    /// those that finished (all, waiting for them, when `wait`). A compaction that fails is
    /// logged and tried again after as many commits more: it is upkeep, the log is whole
    /// without it.
    async fn compact_logs(&mut self, wait: bool) -> Result<()> {
        let partitions: Vec<i32> = self.logs.keys().copied().collect();
        for partition in partitions {
            let log = self.logs.get_mut(&partition).expect("listed just above");
            if log.compacting.is_none() && log.since_snapshot >= self.config.log_compact_commits {
                let training_log = self.log.clone();
                log.compacting = Some(tokio::spawn(async move {
                    let commits = training_log.commits(partition).await?;
                    let compacted = training_log.compact(partition, &commits).await?;
                    Ok(compacted.map_or(0, |c| c.commits))
                }));
            }
            let Some(task) = log.compacting.take_if(|task| wait || task.is_finished()) else { continue };
            match task.await {
                Ok(Ok(folded)) => {
                    log.since_snapshot = log.since_snapshot.saturating_sub(folded);
                    metrics::compaction(if folded > 0 { "compacted" } else { "skipped" });
                }
                Ok(Err(e)) => {
                    log.since_snapshot = 0;
                    metrics::compaction("failed");
                    tracing::warn!(partition, error = %e, "compacting the training log failed; will retry");
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(Error::TaskStopped(e.to_string())),
            }
        }
        Ok(())
    }

    /// Counts what a landed log commit wrote.
    fn count(&mut self, commit: &Commit) {
        self.totals.examples += commit.examples;
        self.totals.late_clicks += commit.late_clicks;
        self.totals.orphan_clicks += commit.orphan_clicks;
        metrics::examples(commit.clicked, commit.examples - commit.clicked);
        metrics::late_clicks(commit.late_clicks);
        metrics::orphan_clicks(commit.orphan_clicks);
    }

    /// Records the log commits that have finished (all of them, waiting, when `wait`).
    async fn finish_log_commits(&mut self, wait: bool) -> Result<()> {
        let partitions: Vec<i32> = self.logs.keys().copied().collect();
        for partition in partitions {
            let log = self.logs.get_mut(&partition).expect("listed just above");
            let Some(task) = log.committing.take_if(|task| wait || task.is_finished()) else { continue };
            let result = match task.await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(Error::TaskStopped(e.to_string())),
            };
            match result {
                Ok(commit) => {
                    let log = self.logs.get_mut(&partition).expect("still held");
                    log.next_seq += 1;
                    log.committed = commit.checkpoint.clone();
                    log.last_commit = Instant::now();
                    log.since_snapshot += 1;
                    self.count(&commit);
                }
                Err(Error::Log(adrank_contracts::Error::LogConflict { partition, seq })) => {
                    tracing::warn!(partition, seq, "another ingester committed this partition's log; reloading it");
                    self.forget_pair(partition);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Folds one event into its partition's updates.
fn fold(updates: &mut Updates, times: &mut Vec<i64>, prefix: &str, decoded: &Decoded) {
    let time = match decoded {
        Decoded::Impression(e) => {
            updates.impression(prefix, e);
            e.event_time_ms
        }
        Decoded::Click(e) => {
            updates.click(prefix, e);
            e.event_time_ms
        }
        Decoded::User(e) => {
            updates.profile(prefix, e);
            e.event_time_ms
        }
        Decoded::Ad(e) => {
            updates.ad(prefix, e);
            e.event_time_ms
        }
    };
    times.push(time);
}

/// Feeds impressions and clicks (or the position of a refused one) to the partition's joiner;
/// returns why the joiner refused an impression, if it did.
fn feed(joiner: Option<&mut Joiner>, kind: Kind, offset: i64, decoded: Option<Decoded>) -> Option<Refusal> {
    let joiner = joiner?;
    match (kind, decoded) {
        (Kind::Impressions, Some(Decoded::Impression(e))) => {
            joiner.impression(offset, Some(e)).map(|refused| Refusal::duplicate(&refused.impression_id))
        }
        (Kind::Impressions, _) => {
            joiner.impression(offset, None);
            None
        }
        (Kind::Clicks, Some(Decoded::Click(e))) => {
            joiner.click(offset, Some(&e));
            None
        }
        (Kind::Clicks, _) => {
            joiner.click(offset, None);
            None
        }
        (Kind::Users | Kind::Ads, _) => None,
    }
}
