//! An ingester's progress through each topic partition it holds, as a state machine.
//!
//! ```text
//!   assigned ──▶ Loading ──loaded(watermark)──▶ Live ──send──▶ (batches in flight)
//!                  ▲                              │                  │
//!                  └──── forget: fenced, or ◀─────┴──── settle ◀─────┘
//!                        another member's log commit
//!   revoked: gone, from any state
//! ```
//!
//! What keeps every event applied once: a round folds a partition's messages against the
//! watermark of the partition's *current load*, and sends them expecting the watermark that the
//! load's previous batch leaves. Redis applies a batch only when the stored watermark is the
//! expected one. An outcome of a batch sent for an earlier load changes nothing here: the
//! current load's watermark was read from Redis (before or after that batch landed), and if it
//! is now behind, its next batch is fenced and the partition is loaded again. Raising it from
//! the old load's outcome instead would let a batch folded against the lower watermark pass the
//! fence with events Redis already holds.

use std::collections::{BTreeMap, HashMap};

use super::Kind;
use crate::online::Outcome;

/// A topic partition.
pub(super) type Key = (Kind, i32);

/// One partition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Its progress is to be read from Redis at the next round: forgotten after a fence or
    /// another member's log commit (a partition first seen is loaded without passing here).
    Loading,
    Live(Live),
}

/// A loaded partition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Live {
    /// The Redis watermark as this load knows it: the next offset whose effect is not in Redis.
    applied: Option<i64>,
    /// The watermark the latest batch in flight leaves, if any: what the next batch expects.
    queued: Option<i64>,
    /// Which load this is.
    load: u64,
    /// The next offset to read.
    next: i64,
    /// The offset last committed to Kafka.
    kafka_committed: Option<i64>,
}

/// What to do with a message read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// Not for this round: the partition is not loaded, or the message was read already.
    Skip,
    /// Below the watermark: Redis (and the dead-letter topic) have it; only the join still may
    /// need it.
    Held,
    /// New to Redis: fold it into the round's batch.
    New,
}

/// A batch to send: the watermark it expects and the one it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Send {
    pub(super) expected: Option<i64>,
    pub(super) next: i64,
    pub(super) load: u64,
}

/// What a batch's outcome meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    /// Applied for the current load: the watermark moved.
    Applied,
    /// Sent for a load since forgotten or taken away: applied or not, it moves nothing.
    Stale { applied: bool },
    /// The current load was fenced (another member moved the watermark): the partition is
    /// loading again.
    Fenced,
}

/// Every partition this member holds.
#[derive(Debug, Default)]
pub(super) struct Progress {
    states: HashMap<Key, State>,
    /// Loads so far, numbering [`Live::load`].
    loads: u64,
}

impl Progress {
    /// The partitions to load before this round's messages are read, with the first offset
    /// the round read of each (`None`: nothing, for a forgotten partition).
    pub(super) fn to_load(&self, read: impl IntoIterator<Item = (Key, i64)>) -> BTreeMap<Key, Option<i64>> {
        let mut first = BTreeMap::new();
        for (key, offset) in read {
            if !matches!(self.states.get(&key), Some(State::Live(_))) {
                first.entry(key).or_insert(Some(offset));
            }
        }
        for (&key, state) in &self.states {
            if *state == State::Loading {
                first.entry(key).or_insert(None);
            }
        }
        first
    }

    /// Whether a forgotten partition waits to be loaded.
    pub(super) fn loading(&self) -> bool {
        self.states.values().any(|s| *s == State::Loading)
    }

    /// Loads a partition from its Redis watermark (`None`: Redis holds nothing of it) and the
    /// oldest offset the training log needs, if it reads the partition. Returns where to seek the consumer back to (`None`
    /// inside: the partition's beginning) when this round's messages of it start too late, or
    /// it read none (a forgotten partition's position is unknown); the round then skips them.
    pub(super) fn loaded(
        &mut self,
        key: Key,
        applied: Option<i64>,
        log_needs: Option<i64>,
        first_read: Option<i64>,
    ) -> Option<Option<i64>> {
        let needed = applied.map(|a| log_needs.map_or(a, |log| a.min(log)));
        let behind = first_read.is_none_or(|read| needed.is_none_or(|n| n < read) && read > 0);
        self.loads += 1;
        let live = Live { applied, queued: None, load: self.loads, next: needed.unwrap_or(0), kafka_committed: None };
        self.states.insert(key, State::Live(live));
        behind.then_some(needed)
    }

    /// Reads one message.
    pub(super) fn read(&mut self, key: Key, offset: i64) -> Read {
        let Some(State::Live(live)) = self.states.get_mut(&key) else { return Read::Skip };
        if offset < live.next {
            return Read::Skip;
        }
        live.next = offset + 1;
        if live.applied.is_none_or(|applied| offset >= applied) { Read::New } else { Read::Held }
    }

    /// The batch of what this round read new before `until` (`None`: all of it), if there is
    /// one to send: a partition forgotten since the round read it has none, nor one whose reads
    /// Redis holds already. A round sends its batches of a partition in offset order.
    pub(super) fn send(&mut self, key: Key, until: Option<i64>) -> Option<Send> {
        let Some(State::Live(live)) = self.states.get_mut(&key) else { return None };
        let next = until.map_or(live.next, |until| until.min(live.next));
        let expected = live.queued.or(live.applied);
        if expected.is_some_and(|expected| expected >= next) {
            return None;
        }
        live.queued = Some(next);
        Some(Send { expected, next, load: live.load })
    }

    /// Records a batch's outcome.
    pub(super) fn settle(&mut self, key: Key, sent: Send, outcome: &Outcome) -> Settled {
        let live = match self.states.get_mut(&key) {
            Some(State::Live(live)) if live.load == sent.load => live,
            _ => return Settled::Stale { applied: *outcome == Outcome::Applied },
        };
        match outcome {
            Outcome::Applied => {
                live.applied = Some(sent.next);
                if live.queued == Some(sent.next) {
                    live.queued = None; // no later batch in flight
                }
                Settled::Applied
            }
            Outcome::Fenced { .. } => {
                self.states.insert(key, State::Loading);
                Settled::Fenced
            }
        }
    }

    /// Forgets a partition, to be loaded afresh at the next round (whether or not that round
    /// reads its messages: the consumer's position may be past what it still needs).
    pub(super) fn forget(&mut self, key: Key) {
        self.states.insert(key, State::Loading);
    }

    /// The group took the partition away.
    pub(super) fn revoke(&mut self, key: Key) {
        self.states.remove(&key);
    }

    /// The Kafka offsets to commit: per loaded partition, the lower of its watermark and what
    /// `log_needs` says the log still needs, where it changed since the last commit.
    pub(super) fn offsets_to_commit(&self, log_needs: impl Fn(Key) -> Option<i64>) -> Vec<(Key, i64)> {
        let mut offsets = Vec::new();
        for (&key, state) in &self.states {
            let State::Live(live) = state else { continue };
            let Some(applied) = live.applied else { continue };
            let needed = log_needs(key).map_or(applied, |log| applied.min(log));
            if live.kafka_committed != Some(needed) {
                offsets.push((key, needed));
            }
        }
        offsets
    }

    /// Records a Kafka offset commit.
    pub(super) fn committed(&mut self, key: Key, offset: i64) {
        if let Some(State::Live(live)) = self.states.get_mut(&key) {
            live.kafka_committed = Some(offset);
        }
    }
}

#[cfg(test)]
mod tests;
