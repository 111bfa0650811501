//! The training log: joined examples as Parquet files partitioned by event hour, committed
//! atomically per Kafka partition.
//!
//! ```text
//! {log}/hour=2026-01-03T14/p003-0000000042-5f0c2a9e.parquet   examples of one commit, one hour
//! {log}/_commits/p003/0000000042.json                          the commit: files + checkpoint
//! {log}/_snapshots/p003/0000000719.json                        commits 0..=719, compacted
//! ```
//!
//! A commit writes its Parquet files first, then its commit record, created only if no record
//! of that sequence number exists (a conditional put). The record is the commit point: it lists
//! the files and carries the [`Checkpoint`] a restarted joiner continues from, so a crash before
//! it leaves unlisted files (never read: readers go through the commit records; deleted by a
//! later owner of the partition once a record of their sequence number exists) and a crash
//! after it loses nothing. Two ingesters
//! racing for one partition cannot both commit the same sequence number; the loser reloads.
//! Data file names carry a random token so that the loser's files never overwrite the winner's.
//!
//! A partition's commits are compacted now and then ([`compact`]): a snapshot record stands for
//! every commit up to its sequence number, their small files merged into one per hour, and the
//! commit records it replaces are deleted. Loading a partition reads its newest snapshot and
//! the commits after it, so the work stays flat however long the log runs.

pub mod compact;
pub mod join;
pub mod outcomes;
pub mod parquet;

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload, path::Path};
use serde::{Deserialize, Serialize};

pub use join::{Checkpoint, Example, Joiner};
pub use outcomes::Outcomes;

use crate::{Error, Result, storage::Location};

/// One committed unit of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    pub partition: i32,
    pub seq: u64,
    /// Parquet files, relative to the log's root.
    pub files: Vec<String>,
    pub examples: u64,
    pub clicked: u64,
    /// Late and orphan clicks counted since the previous commit.
    pub late_clicks: u64,
    pub orphan_clicks: u64,
    pub checkpoint: Checkpoint,
    /// Wall-clock time of the commit, milliseconds since the Unix epoch.
    pub committed_at_ms: i64,
    /// For a snapshot: how many commits it stands for (every one of the partition up to `seq`);
    /// 0 for a commit. Its counts are their sums, its files theirs, merged per hour.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compacts: u64,
    /// For a snapshot: files merged away when it was written, still readable by a reader that
    /// listed the commits before; the next compaction deletes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
    /// The examples' outcomes per model version and rollout arm ([`outcomes`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outcomes: BTreeMap<String, Outcomes>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Commit {
    /// Whether this is a snapshot of several commits rather than one commit.
    pub fn is_snapshot(&self) -> bool {
        self.compacts > 0
    }
}

/// The training log at one location.
#[derive(Debug, Clone)]
pub struct TrainingLog {
    store: Arc<dyn ObjectStore>,
    location: String,
}

/// What [`TrainingLog::commit`] needs besides the examples.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub partition: i32,
    pub seq: u64,
    pub checkpoint: Checkpoint,
    pub late_clicks: u64,
    pub orphan_clicks: u64,
}

impl TrainingLog {
    /// Opens the log at `location` (a folder, `file://` or `s3://`).
    pub fn open(location: &str) -> Result<Self> {
        let parsed = Location::parse(location).ok_or_else(|| Error::TrainingLog {
            location: location.into(),
            action: "parsing the location".into(),
            reason: "expected a folder, file:///path or s3://bucket/prefix".into(),
        })?;
        let store = parsed.open().map_err(|e| Error::TrainingLog {
            location: location.into(),
            action: "opening the location".into(),
            reason: e.to_string(),
        })?;
        Ok(Self { store, location: location.into() })
    }

    fn error(&self, action: impl Into<String>, reason: impl ToString) -> Error {
        Error::TrainingLog { location: self.location.clone(), action: action.into(), reason: reason.to_string() }
    }

    /// One partition's commits, oldest first: its newest snapshot (if any), then the commits
    /// after it.
    pub async fn commits(&self, partition: i32) -> Result<Vec<Commit>> {
        let (snapshots, commits) = (snapshot_prefix(Some(partition)), commit_prefix(Some(partition)));
        self.read_log_state(&snapshots, &commits).await
    }

    /// Every partition's commits: per partition its newest snapshot and the commits after it,
    /// ordered by (partition, sequence number).
    pub async fn all_commits(&self) -> Result<Vec<Commit>> {
        self.read_log_state(&snapshot_prefix(None), &commit_prefix(None)).await
    }

    /// The newest snapshot per partition under `snapshots` and the commits under `commits`
    /// after it. A compaction may delete a listed record before it is read: then the state is
    /// read again (the compaction's snapshot stands for it).
    async fn read_log_state(&self, snapshots: &Path, commits: &Path) -> Result<Vec<Commit>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_read_log_state(snapshots, commits).await {
                Ok(state) => return Ok(state),
                Err(ReadError::Missing(_)) if attempt < 3 => {}
                Err(ReadError::Missing(e) | ReadError::Failed(e)) => return Err(e),
            }
        }
    }

    async fn try_read_log_state(&self, snapshots: &Path, commits: &Path) -> Result<Vec<Commit>, ReadError> {
        // Snapshot names sort by sequence number: only each partition's newest is read.
        let mut newest: BTreeMap<String, Path> = BTreeMap::new();
        for path in self.list(snapshots).await? {
            let folder = path.parts().nth(1).map(|p| p.as_ref().to_string()).unwrap_or_default();
            let entry = newest.entry(folder).or_insert_with(|| path.clone());
            if path.as_ref() > entry.as_ref() {
                *entry = path;
            }
        }
        let listed = self.list(commits).await?;
        let records = self.read_records(newest.into_values().chain(listed)).await?;
        let covered: BTreeMap<i32, u64> =
            records.iter().filter(|c| c.is_snapshot()).map(|c| (c.partition, c.seq)).collect();
        // A commit a snapshot covers is read only when its record outlived the compaction (or a
        // zombie wrote it after): the snapshot stands for it.
        let mut state: Vec<Commit> = records
            .into_iter()
            .filter(|c| c.is_snapshot() || covered.get(&c.partition).is_none_or(|&seq| c.seq > seq))
            .collect();
        state.sort_by_key(|c| (c.partition, c.seq));
        Ok(state)
    }

    /// The paths under `prefix`.
    async fn list(&self, prefix: &Path) -> Result<Vec<Path>> {
        let listed: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.error(format!("listing {prefix}"), e))?;
        Ok(listed.into_iter().map(|meta| meta.location).collect())
    }

    /// Reads records, several at once (an object store answers each in a round trip).
    async fn read_records(&self, paths: impl Iterator<Item = Path>) -> Result<Vec<Commit>, ReadError> {
        let reads = futures::stream::iter(paths.map(|path| async move {
            let bytes = match self.store.get(&path).await {
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(ReadError::Missing(self.error(format!("reading {path}"), "deleted while read")));
                }
                Err(e) => return Err(self.error(format!("reading {path}"), e).into()),
                Ok(result) => result.bytes().await.map_err(|e| self.error(format!("reading {path}"), e))?,
            };
            serde_json::from_slice::<Commit>(&bytes).map_err(|e| self.error(format!("reading {path}"), e).into())
        }));
        reads.buffer_unordered(16).try_collect().await
    }

    async fn get(&self, path: &Path) -> Result<Bytes> {
        let result = self.store.get(path).await.map_err(|e| self.error(format!("reading {path}"), e))?;
        result.bytes().await.map_err(|e| self.error(format!("reading {path}"), e))
    }

    /// Deletes a partition's data files that none of its `commits` (oldest first) lists and
    /// none ever will: those of a sequence number already committed, left by a crash between
    /// writing files and committing, or by the loser of a race for that number. Files of a later
    /// number stay: the partition's previous owner may still be writing that commit (a member
    /// the group took the partition from finishes the commit it had started), and its record
    /// would list them. They go at a later load, once a record of their number exists.
    ///
    /// Only the hours the commits after the newest snapshot wrote are searched, never the whole
    /// log: a failed attempt at a number closed the same examples as the commit that took the
    /// number (a replay from the same checkpoint), so its files lie in those hours (or the next
    /// commits', when the replay split them differently). A stray elsewhere stays, never read.
    /// A compaction's merged files are left alone: one may be under way elsewhere.
    pub async fn remove_uncommitted(&self, partition: i32, commits: &[Commit]) -> Result<usize> {
        let Some(latest) = commits.last().map(|c| c.seq) else { return Ok(0) };
        let listed: std::collections::HashSet<&str> =
            commits.iter().flat_map(|c| c.files.iter().chain(&c.retired).map(String::as_str)).collect();
        let hours: std::collections::BTreeSet<&str> = commits
            .iter()
            .filter(|c| !c.is_snapshot())
            .flat_map(|c| &c.files)
            .filter_map(|file| file.split('/').next())
            .collect();
        let own = format!("p{partition:03}-");
        let mut removed = 0;
        for hour in hours {
            for path in self.list(&Path::from(hour)).await? {
                let name = path.filename().unwrap_or_default();
                let abandoned = !name.ends_with(compact::MERGED)
                    && name
                        .strip_prefix(&own)
                        .and_then(|rest| rest.split('-').next()?.parse::<u64>().ok())
                        .is_some_and(|seq| seq <= latest);
                if abandoned && !listed.contains(path.as_ref()) {
                    self.delete(&path).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Deletes one object; one already gone is not an error.
    async fn delete(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(format!("deleting {path}"), e)),
        }
    }

    /// Writes examples as one Parquet file at `path` (relative to the log's root).
    async fn write_file(&self, path: &str, examples: Vec<Example>) -> Result<()> {
        // Encoding is CPU work: keep it off the async runtime's threads.
        let bytes = tokio::task::spawn_blocking(move || parquet::to_parquet(&examples))
            .await
            .map_err(|e| self.error("encoding Parquet", e))?
            .map_err(|e| self.error("encoding Parquet", e))?;
        self.store
            .put(&Path::from(path), PutPayload::from(bytes))
            .await
            .map_err(|e| self.error(format!("writing {path}"), e))?;
        Ok(())
    }

    /// Creates a record at `path` unless one exists there; `false` when one did.
    async fn create_record(&self, path: &Path, record: &Commit) -> Result<bool> {
        let bytes = serde_json::to_vec_pretty(record).expect("commits serialise; this is a bug");
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(path, PutPayload::from(bytes), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.error(format!("writing {path}"), e)),
        }
    }

    /// Writes `examples` (one file per event hour) and then the commit record. Fails with
    /// [`Error::LogConflict`] when that sequence number was committed by someone else.
    pub async fn commit(&self, request: CommitRequest, examples: Vec<Example>) -> Result<Commit> {
        let outcomes = outcomes::count(&examples);
        let mut by_hour: BTreeMap<String, Vec<Example>> = BTreeMap::new();
        for example in examples {
            by_hour.entry(utc_hour(example.impression.event_time_ms)).or_default().push(example);
        }
        let token = format!("{:08x}", random_token());
        let mut commit = Commit {
            partition: request.partition,
            seq: request.seq,
            files: Vec::with_capacity(by_hour.len()),
            examples: 0,
            clicked: 0,
            late_clicks: request.late_clicks,
            orphan_clicks: request.orphan_clicks,
            checkpoint: request.checkpoint,
            committed_at_ms: crate::events::now_ms(),
            compacts: 0,
            retired: Vec::new(),
            outcomes,
        };
        for (hour, examples) in by_hour {
            commit.examples += examples.len() as u64;
            commit.clicked += examples.iter().filter(|e| e.label()).count() as u64;
            let path = format!("hour={hour}/p{:03}-{:010}-{token}.parquet", request.partition, request.seq);
            self.write_file(&path, examples).await?;
            commit.files.push(path);
        }
        let path = Path::from(format!("{}/{:010}.json", commit_prefix(Some(request.partition)), request.seq));
        if self.create_record(&path, &commit).await? {
            Ok(commit)
        } else {
            Err(Error::LogConflict { partition: request.partition, seq: request.seq })
        }
    }

    /// Reads the examples of the given commits.
    pub async fn read(&self, commits: &[Commit]) -> Result<Vec<Example>> {
        let mut examples = Vec::new();
        for file in commits.iter().flat_map(|c| &c.files) {
            examples.extend(self.read_file(file).await?);
        }
        Ok(examples)
    }

    /// Reads the examples of one data file (a path a commit lists).
    pub async fn read_file(&self, file: &str) -> Result<Vec<Example>> {
        let bytes = self.get(&Path::from(file)).await?;
        parquet::from_parquet(bytes).map_err(|e| self.error(format!("decoding {file}"), e))
    }

    /// Copies the examples served in `[since_ms, until_ms)` (every hour when `None`) to the log at
    /// `to`, their labels shuffled among them: a model trained on the copy learns nothing about
    /// who clicks. A deliberately bad training set (the demo's bad candidate, the rollout tests'
    /// worse model); returns the examples copied.
    pub async fn shuffled_copy(&self, to: &TrainingLog, window: Option<(i64, i64)>, seed: u64) -> Result<usize> {
        let commits = self.all_commits().await?;
        let mut examples = Vec::new();
        match window {
            Some((since, until)) => {
                for file in Self::files_between(&commits, since, until) {
                    examples.extend(self.read_file(&file).await?);
                }
                examples.retain(|e| (since..until).contains(&e.impression.event_time_ms));
            }
            None => examples = self.read(&commits).await?,
        }
        let mut state = seed | 1;
        for i in (1..examples.len()).rev() {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let j = (state >> 33) as usize % (i + 1);
            let (a, b) = (examples[i].clicks, examples[j].clicks);
            (examples[i].clicks, examples[j].clicks) = (b, a);
        }
        for example in &mut examples {
            example.first_click_ms = (example.clicks > 0).then_some(example.impression.event_time_ms);
        }
        let copied = examples.len();
        let request =
            CommitRequest { partition: 0, seq: 0, checkpoint: Checkpoint::default(), late_clicks: 0, orphan_clicks: 0 };
        to.commit(request, examples).await?;
        Ok(copied)
    }

    /// The committed data files holding examples served in `[since_ms, until_ms)`, oldest hour
    /// first (files are per event hour, so this reads no other hour).
    pub fn files_between(commits: &[Commit], since_ms: i64, until_ms: i64) -> Vec<String> {
        if until_ms <= since_ms {
            return vec![];
        }
        let (first, last) = (format!("hour={}/", utc_hour(since_ms)), format!("hour={}/", utc_hour(until_ms - 1)));
        let mut files: Vec<String> = commits
            .iter()
            .flat_map(|c| &c.files)
            .filter(|f| f.as_str() >= first.as_str() && f.get(..last.len()).is_some_and(|h| h <= last.as_str()))
            .cloned()
            .collect();
        files.sort();
        files
    }
}

/// Why reading the log's records failed: `Missing` when a compaction deleted a record after
/// it was listed (reading again finds the snapshot instead).
enum ReadError {
    Missing(Error),
    Failed(Error),
}

impl From<Error> for ReadError {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

/// Where a partition's commit records live (`None`: every partition's).
fn commit_prefix(partition: Option<i32>) -> Path {
    Path::from(partition.map_or("_commits".to_string(), |p| format!("_commits/p{p:03}")))
}

/// Where a partition's snapshot records live (`None`: every partition's).
fn snapshot_prefix(partition: Option<i32>) -> Path {
    Path::from(partition.map_or("_snapshots".to_string(), |p| format!("_snapshots/p{p:03}")))
}

/// A token that differs between commit attempts (time and process), for file names.
fn random_token() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    xxhash_rust::xxh3::xxh3_64(&[nanos.to_le_bytes(), u64::from(std::process::id()).to_le_bytes()].concat()) as u32
}

/// The event hour (ms) of a data file path, `hour=YYYY-MM-DDTHH/…`.
pub fn file_hour(file: &str) -> Option<i64> {
    parse_utc(file.strip_prefix("hour=")?.split('/').next()?)
}

/// `YYYY-MM-DDTHH` of a UTC time in milliseconds (proleptic Gregorian calendar).
pub fn utc_hour(ms: i64) -> String {
    let hours = ms.div_euclid(3_600_000);
    let (days, hour) = (hours.div_euclid(24), hours.rem_euclid(24));
    // Days since 1970-01-01 to a civil date (the algorithm of Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}")
}

/// Milliseconds of a UTC time written `YYYY-MM-DD`, `YYYY-MM-DDTHH` or `YYYY-MM-DDTHH:MM`
/// (the forms [`utc_hour`] and people write), or `None` when it is not one of them.
pub fn parse_utc(text: &str) -> Option<i64> {
    let (date, time) = text.split_once('T').unwrap_or((text, "00"));
    let mut parts = date.split('-');
    let (year, month, day): (i64, i64, i64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    let (hour, minute): (i64, i64) = match time.split_once(':') {
        Some((h, m)) => (h.parse().ok()?, m.trim_end_matches('Z').parse().ok()?),
        None => (time.trim_end_matches('Z').parse().ok()?, 0),
    };
    let valid = parts.next().is_none()
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute);
    if !valid {
        return None;
    }
    // A civil date to days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 24 + hour) * 60 + minute) * 60_000;
    // Day 31 of a 30-day month would roll over: refuse it instead.
    (utc_hour(ms) == format!("{year:04}-{month:02}-{day:02}T{hour:02}")).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_parse_back() {
        assert_eq!(parse_utc("2026-01-01"), Some(1_767_225_600_000));
        assert_eq!(parse_utc("2026-01-01T05"), Some(1_767_225_600_000 + 5 * 3_600_000));
        assert_eq!(parse_utc("2026-01-01T05:30Z"), Some(1_767_225_600_000 + 5 * 3_600_000 + 30 * 60_000));
        assert_eq!(parse_utc("2024-02-29T13"), Some(1_709_164_800_000 + 13 * 3_600_000));
        for bad in ["2026-02-30", "2026-13-01", "2026-01-01T24", "yesterday", "2026-01"] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
        for ms in [0, 1_767_225_600_000, 1_709_164_800_000 + 13 * 3_600_000] {
            assert_eq!(parse_utc(&utc_hour(ms)), Some(ms));
        }
    }

    #[test]
    fn files_between_picks_the_window_hours() {
        let commit = |files: &[&str]| Commit {
            partition: 0,
            seq: 0,
            files: files.iter().map(|f| f.to_string()).collect(),
            examples: 0,
            clicked: 0,
            ..Commit::default()
        };
        let commits = [
            commit(&["hour=2026-01-01T00/p000-1.parquet", "hour=2026-01-01T01/p000-1.parquet"]),
            commit(&["hour=2026-01-01T02/p001-1.parquet", "hour=2026-01-01T03/p000-2.parquet"]),
        ];
        let t = |h: i64| 1_767_225_600_000 + h * 3_600_000;
        assert_eq!(
            TrainingLog::files_between(&commits, t(1), t(3)),
            vec!["hour=2026-01-01T01/p000-1.parquet", "hour=2026-01-01T02/p001-1.parquet"]
        );
        // A window inside one hour still reads that hour's file.
        assert_eq!(TrainingLog::files_between(&commits, t(3) + 60_000, t(3) + 120_000).len(), 1);
        assert!(TrainingLog::files_between(&commits, t(5), t(5)).is_empty());
    }

    /// A restart removes what a failed attempt at a committed number left, and keeps what a
    /// commit still under way elsewhere may list.
    #[tokio::test]
    async fn only_files_of_committed_numbers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let log = TrainingLog::open(&dir.path().display().to_string()).unwrap();
        let mut impression = crate::events::Impression::example("i1", Default::default());
        impression.event_time_ms = 1_767_225_600_000;
        let example = Example { impression, partition: 0, offset: 0, clicks: 0, first_click_ms: None };
        let request =
            CommitRequest { partition: 0, seq: 0, checkpoint: Checkpoint::default(), late_clicks: 0, orphan_clicks: 0 };
        log.commit(request, vec![example]).await.unwrap();
        let hour = dir.path().join("hour=2026-01-01T00");
        let stray = |name: &str| {
            std::fs::write(hour.join(name), b"not parquet").unwrap();
            hour.join(name)
        };
        let (lost_race, under_way, other) = (
            stray("p000-0000000000-00000bad.parquet"),
            stray("p000-0000000001-0000cafe.parquet"),
            stray("p001-0000000000-0000beef.parquet"),
        );
        let commits = log.commits(0).await.unwrap();
        assert_eq!(log.remove_uncommitted(0, &commits).await.unwrap(), 1);
        assert!(!lost_race.exists(), "seq 0 is committed without this file");
        assert!(under_way.exists(), "seq 1 may still be committed by someone else");
        assert!(other.exists(), "another partition's file");
        assert_eq!(log.read(&commits).await.unwrap().len(), 1, "the committed file stays");
    }

    #[test]
    fn hours_are_utc_calendar_hours() {
        assert_eq!(utc_hour(0), "1970-01-01T00");
        assert_eq!(utc_hour(1_767_225_600_000), "2026-01-01T00");
        assert_eq!(utc_hour(1_767_225_600_000 - 1), "2025-12-31T23");
        // 2024 is a leap year.
        assert_eq!(utc_hour(1_709_164_800_000 + 13 * 3_600_000), "2024-02-29T13");
    }
}
