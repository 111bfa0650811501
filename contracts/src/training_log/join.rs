//! Joining one partition's impressions with their clicks into training examples.
//!
//! An impression and its clicks share a key, so they sit in the same partition number of the
//! impression and click topics, and one [`Joiner`] sees both. An impression's attribution window
//! closes once the click partition has shown a click more than `lateness` past the window's end:
//! clicks are published in (nearly) time order, so by then every click that belongs to the
//! window has been read, however the two partitions' reads interleaved. The label is therefore
//! a function of the events alone: *some click happened no later than `window` after the
//! impression*. That is what makes a replay after a crash produce the same examples.
//!
//! Clicks read before their impression wait for it; clicks for impressions already written are
//! *late*, clicks whose impression never shows up are *orphans*; both are counted. A click whose
//! `click_id` the impression has already counted (a client's retry) counts nothing: the replay
//! from a checkpoint reads every click a waiting impression counted, so it decides the same.
//!
//! [`Checkpoint`] is what a crash-safe restart needs: where to replay each topic from and which
//! impressions past that point were already written. The replay rebuilds the rest, including
//! the time watermarks, from the events themselves.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::events::{Click, Impression};

/// A joined impression, ready for the training log.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub impression: Impression,
    /// The impression's Kafka partition and offset.
    pub partition: i32,
    pub offset: i64,
    /// Clicks inside the attribution window.
    pub clicks: u32,
    /// The first of them, in event time.
    pub first_click_ms: Option<i64>,
}

impl Example {
    /// Whether the impression was clicked within its window.
    pub fn label(&self) -> bool {
        self.clicks > 0
    }
}

/// What a restarted joiner needs; stored with every training-log commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Replay impressions from here: the oldest impression still waiting for its window.
    pub impressions_resume: i64,
    /// Replay clicks from here: the oldest click an unwritten impression may need.
    pub clicks_resume: i64,
    /// The next impression and click offsets the joiner had not read.
    pub impressions_next: i64,
    pub clicks_next: i64,
    /// Impressions at or after `impressions_resume` that are already written.
    pub written: Vec<i64>,
}

#[derive(Debug)]
struct Pending {
    impression: Impression,
    offset: i64,
    clicks: u32,
    first_click_ms: Option<i64>,
    /// The oldest click offset attached, for the checkpoint's click replay point.
    first_click_offset: Option<i64>,
    /// The ids of the clicks counted: a retry of one counts nothing.
    click_ids: Vec<String>,
}

/// Joins one partition pair. Feed it every message of both partitions in offset order (per
/// partition), then take the closed examples with [`Joiner::take_closed`].
#[derive(Debug)]
pub struct Joiner {
    partition: i32,
    window_ms: i64,
    lateness_ms: i64,
    /// Waiting impressions by (event time, offset): the order their windows close in. Boxed:
    /// windows close from the front, and a B-tree node shifts its entries on every removal
    /// (unboxed, ~3 KB of memmove per closed impression, 3% of the ingester's CPU).
    pending: BTreeMap<(i64, i64), Box<Pending>>,
    pending_ids: HashMap<String, (i64, i64)>,
    /// Clicks read before their impression, by (event time, offset) -> (impression id, click id).
    early: BTreeMap<(i64, i64), (String, String)>,
    early_ids: HashMap<String, Vec<(i64, i64)>>,
    /// Recently written impressions (id -> event time), to tell late clicks from orphans.
    written_ids: HashMap<String, i64>,
    written_order: VecDeque<(i64, String)>,
    /// Written impression offsets not yet below the replay point.
    written_offsets: BTreeSet<i64>,
    impression_max_ms: Option<i64>,
    click_max_ms: Option<i64>,
    impressions_next: i64,
    clicks_next: i64,
    /// What the restored checkpoint says was already done.
    restored: Checkpoint,
    closed: Vec<Example>,
    /// Late and orphan clicks counted since the last [`Joiner::take_counts`].
    late: u64,
    orphans: u64,
}

impl Joiner {
    /// A joiner for `partition`, continuing from `checkpoint` (the default one for a fresh log).
    pub fn new(partition: i32, window_ms: i64, lateness_ms: i64, checkpoint: Checkpoint) -> Self {
        Self {
            partition,
            window_ms,
            lateness_ms,
            pending: BTreeMap::new(),
            pending_ids: HashMap::new(),
            early: BTreeMap::new(),
            early_ids: HashMap::new(),
            written_ids: HashMap::new(),
            written_order: VecDeque::new(),
            written_offsets: checkpoint.written.iter().copied().collect(),
            // The time watermarks are not restored: they must grow from the replay itself, or a
            // replayed impression would close (or a replayed early click expire) before the
            // replay has brought back the clicks it needs.
            impression_max_ms: None,
            click_max_ms: None,
            impressions_next: checkpoint.impressions_resume,
            clicks_next: checkpoint.clicks_resume,
            restored: checkpoint,
            closed: Vec::new(),
            late: 0,
            orphans: 0,
        }
    }

    /// Reads one impression. `None` for a message that was not a valid impression (it still
    /// moves the read position). Gives the impression back when it is refused: its id is
    /// that of another impression the joiner holds (waiting, or written recently enough that
    /// a click could still name it). Joined, one of the two would take the other's clicks; so
    /// the second stays out of the log, for the caller to dead-letter.
    pub fn impression(&mut self, offset: i64, impression: Option<Impression>) -> Option<Impression> {
        if offset < self.impressions_next {
            // Before the replay point, or read twice: already accounted for.
            return None;
        }
        self.impressions_next = offset + 1;
        let impression = impression?;
        if offset < self.restored.impressions_next && self.written_offsets.contains(&offset) {
            return None;
        }
        let id = &impression.impression_id;
        if self.pending_ids.contains_key(id) || self.written_ids.contains_key(id) {
            return Some(impression);
        }
        let time = impression.event_time_ms;
        self.impression_max_ms = Some(self.impression_max_ms.map_or(time, |m| m.max(time)));
        let mut pending = Pending {
            impression,
            offset,
            clicks: 0,
            first_click_ms: None,
            first_click_offset: None,
            click_ids: Vec::new(),
        };
        if let Some(clicks) = self.early_ids.remove(&pending.impression.impression_id) {
            for (click_time, click_offset) in clicks {
                let Some((_, click_id)) = self.early.remove(&(click_time, click_offset)) else { continue };
                let click = (click_time, click_offset, click_id);
                self.attach(&mut pending, click, click_offset < self.restored.clicks_next);
            }
        }
        self.pending_ids.insert(pending.impression.impression_id.clone(), (time, offset));
        self.pending.insert((time, offset), Box::new(pending));
        self.advance();
        None
    }

    /// Reads one click. `None` for a message that was not a valid click.
    pub fn click(&mut self, offset: i64, click: Option<&Click>) {
        if offset < self.clicks_next {
            return;
        }
        self.clicks_next = offset + 1;
        let Some(click) = click else { return };
        let time = click.event_time_ms;
        self.click_max_ms = Some(self.click_max_ms.map_or(time, |m| m.max(time)));
        let replayed = offset < self.restored.clicks_next;
        if let Some(&key) = self.pending_ids.get(&click.impression_id) {
            let mut pending = self.pending.remove(&key).expect("pending_ids mirrors pending; this is a bug");
            self.attach(&mut pending, (time, offset, click.click_id.clone()), replayed);
            self.pending.insert(key, pending);
        } else if self.written_ids.contains_key(&click.impression_id) {
            if !replayed {
                self.late += 1;
            }
        } else {
            self.early.insert((time, offset), (click.impression_id.clone(), click.click_id.clone()));
            self.early_ids.entry(click.impression_id.clone()).or_default().push((time, offset));
        }
        self.advance();
    }

    /// Counts a click (time, offset, click id) for a waiting impression.
    fn attach(
        &mut self,
        pending: &mut Pending,
        (click_time, click_offset, click_id): (i64, i64, String),
        replayed: bool,
    ) {
        if pending.click_ids.contains(&click_id) {
            return; // a retry of a click counted already
        }
        if click_time <= pending.impression.event_time_ms + self.window_ms {
            pending.click_ids.push(click_id);
            pending.clicks += 1;
            pending.first_click_ms = Some(pending.first_click_ms.map_or(click_time, |t| t.min(click_time)));
            pending.first_click_offset = Some(pending.first_click_offset.map_or(click_offset, |o| o.min(click_offset)));
        } else if !replayed {
            self.late += 1;
        }
    }

    /// Closes every window the click watermark has passed and expires early clicks whose
    /// impression can no longer come.
    fn advance(&mut self) {
        if let Some(click_max) = self.click_max_ms {
            let watermark = click_max - self.lateness_ms;
            while let Some(entry) = self.pending.first_entry() {
                if entry.key().0 + self.window_ms >= watermark {
                    break;
                }
                let pending = entry.remove();
                self.close(*pending);
            }
            // Written ids are kept while a click for them could still be merely late rather
            // than lost: one more window and lateness past the close.
            while let Some((time, _)) = self.written_order.front() {
                if time + 2 * (self.window_ms + self.lateness_ms) >= watermark {
                    break;
                }
                let (_, id) = self.written_order.pop_front().expect("front exists");
                self.written_ids.remove(&id);
            }
        }
        if let Some(impression_max) = self.impression_max_ms {
            let watermark = impression_max - self.lateness_ms;
            while let Some(entry) = self.early.first_entry() {
                let (time, offset) = *entry.key();
                if time >= watermark {
                    break;
                }
                let (id, _) = entry.remove();
                if let Some(held) = self.early_ids.get_mut(&id) {
                    held.retain(|&c| c != (time, offset));
                    if held.is_empty() {
                        self.early_ids.remove(&id);
                    }
                }
                if offset >= self.restored.clicks_next {
                    if self.written_ids.contains_key(&id) { self.late += 1 } else { self.orphans += 1 }
                }
            }
        }
    }

    fn close(&mut self, pending: Pending) {
        let id = pending.impression.impression_id.clone();
        self.pending_ids.remove(&id);
        self.written_order.push_back((pending.impression.event_time_ms, id.clone()));
        self.written_ids.insert(id, pending.impression.event_time_ms);
        self.written_offsets.insert(pending.offset);
        self.closed.push(Example {
            partition: self.partition,
            offset: pending.offset,
            clicks: pending.clicks,
            first_click_ms: pending.first_click_ms,
            impression: pending.impression,
        });
    }

    /// Examples closed since the last call.
    pub fn closed(&self) -> usize {
        self.closed.len()
    }

    /// Takes the closed examples with the checkpoint that holds once they are written.
    pub fn take_closed(&mut self) -> (Vec<Example>, Checkpoint) {
        let impressions_resume = self.pending.values().map(|p| p.offset).min().unwrap_or(self.impressions_next);
        // Written offsets below the replay point are never read again.
        self.written_offsets = self.written_offsets.split_off(&impressions_resume);
        let clicks_resume = self
            .pending
            .values()
            .filter_map(|p| p.first_click_offset)
            .chain(self.early.keys().map(|&(_, offset)| offset))
            .min()
            .unwrap_or(self.clicks_next);
        let checkpoint = Checkpoint {
            impressions_resume,
            clicks_resume,
            impressions_next: self.impressions_next,
            clicks_next: self.clicks_next,
            written: self.written_offsets.iter().copied().collect(),
        };
        (std::mem::take(&mut self.closed), checkpoint)
    }

    /// Late and orphan clicks counted since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.late), std::mem::take(&mut self.orphans))
    }
}

#[cfg(test)]
mod tests;
