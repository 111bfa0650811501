//! Compacting a partition's commits into a snapshot.
//!
//! The ingester commits a partition every few seconds: a day makes ~17k commit records and as
//! many small files per hour. A snapshot at sequence number N stands for every commit of the
//! partition up to N: their counts summed, the checkpoint of N, and their files, those of each
//! hour the newest commits touched merged into one. It is created only if no snapshot of N exists
//! (a conditional put, like a commit), and is the compaction's commit point: then the commit
//! records up to N go, and older snapshots with the files they had retired. A file merged away
//! is kept until the next compaction, so a reader that listed the commits before this one can
//! still read it; a listed record deleted before it was read makes the reader list again.

use std::collections::{BTreeMap, HashSet};

use object_store::path::Path;

use super::{Commit, TrainingLog, commit_prefix, random_token, snapshot_prefix};
use crate::Result;

/// How the name of a file a compaction wrote ends.
pub(super) const MERGED: &str = "-merged.parquet";

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// The snapshot written.
    pub snapshot: Commit,
    /// Commit records it replaced.
    pub commits: usize,
}

impl TrainingLog {
    /// Compacts one partition's `commits` (as [`TrainingLog::commits`] gives them) into a
    /// snapshot at the newest one's sequence number. `None` when there is nothing to compact,
    /// or another writer's snapshot of that number exists (its own then stands).
    pub async fn compact(&self, partition: i32, commits: &[Commit]) -> Result<Option<Compacted>> {
        let (previous, tail) = match commits.split_first() {
            Some((first, rest)) if first.is_snapshot() => (Some(first), rest),
            _ => (None, commits),
        };
        let Some(last) = tail.last() else { return Ok(None) };
        if previous.is_none() && tail.len() < 2 {
            return Ok(None);
        }
        // Each hour's files, oldest first; merged where the tail wrote to the hour (older hours
        // were merged by earlier compactions).
        let mut hours: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
        for file in previous.into_iter().chain(tail).flat_map(|c| &c.files) {
            hours.entry(hour_of(file)).or_default().push(file);
        }
        let touched: HashSet<&str> = tail.iter().flat_map(|c| &c.files).map(|f| hour_of(f)).collect();
        let token = format!("{:08x}", random_token());
        let (mut files, mut retired, mut written) = (Vec::new(), Vec::new(), Vec::new());
        for (hour, inputs) in hours {
            if inputs.len() < 2 || !touched.contains(hour) {
                files.extend(inputs.into_iter().cloned());
                continue;
            }
            let mut examples = Vec::new();
            for input in &inputs {
                examples.extend(self.read_file(input).await?);
            }
            let path = format!("{hour}/p{partition:03}-{:010}-{token}{MERGED}", last.seq);
            self.write_file(&path, examples).await?;
            written.push(path.clone());
            files.push(path);
            retired.extend(inputs.into_iter().cloned());
        }
        let all = || previous.into_iter().chain(tail);
        let snapshot = Commit {
            partition,
            seq: last.seq,
            files,
            examples: all().map(|c| c.examples).sum(),
            clicked: all().map(|c| c.clicked).sum(),
            late_clicks: all().map(|c| c.late_clicks).sum(),
            orphan_clicks: all().map(|c| c.orphan_clicks).sum(),
            checkpoint: last.checkpoint.clone(),
            committed_at_ms: crate::events::now_ms(),
            compacts: previous.map_or(0, |p| p.compacts) + tail.len() as u64,
            retired,
            outcomes: super::outcomes::sum(all()),
        };
        let path = Path::from(format!("{}/{:010}.json", snapshot_prefix(Some(partition)), last.seq));
        if !self.create_record(&path, &snapshot).await? {
            for file in &written {
                self.delete(&Path::from(file.as_str())).await?;
            }
            return Ok(None);
        }
        self.remove_replaced(partition, last.seq).await?;
        Ok(Some(Compacted { snapshot, commits: tail.len() }))
    }

    /// Deletes what the snapshot at `seq` replaces: the commit records up to it, and older
    /// snapshots with the files they retired (which readers have had one compaction's time to
    /// finish with). A crash midway leaves some for the next compaction.
    async fn remove_replaced(&self, partition: i32, seq: u64) -> Result<()> {
        for path in self.list(&commit_prefix(Some(partition))).await? {
            if record_seq(&path).is_some_and(|s| s <= seq) {
                self.delete(&path).await?;
            }
        }
        for path in self.list(&snapshot_prefix(Some(partition))).await? {
            if record_seq(&path).is_none_or(|s| s >= seq) {
                continue;
            }
            let old = match self.read_records(std::iter::once(path.clone())).await {
                Ok(mut records) => records.remove(0),
                Err(super::ReadError::Missing(_)) => continue,
                Err(super::ReadError::Failed(e)) => return Err(e),
            };
            for file in &old.retired {
                self.delete(&Path::from(file.as_str())).await?;
            }
            self.delete(&path).await?;
        }
        Ok(())
    }
}

/// The `hour=…` folder of a data file.
fn hour_of(file: &str) -> &str {
    file.split('/').next().unwrap_or_default()
}

/// The sequence number a record's name carries (`0000000042.json`).
fn record_seq(path: &Path) -> Option<u64> {
    path.filename()?.strip_suffix(".json")?.parse().ok()
}

#[cfg(test)]
mod tests;
