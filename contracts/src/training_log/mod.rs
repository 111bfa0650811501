//! The training log: joined examples as Parquet files partitioned by event hour, committed
//! atomically per Kafka partition.
//!
//! ```text
//! {log}/hour=2026-01-03T14/p003-0000000042-5f0c2a9e.parquet   examples of one commit, one hour
//! {log}/_commits/p003/0000000042.json                          the commit: files + checkpoint
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

pub mod join;
pub mod parquet;

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload, path::Path};
use serde::{Deserialize, Serialize};

pub use join::{Checkpoint, Example, Joiner};

use crate::{Error, Result, storage::Location};

/// One committed unit of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

    /// Every commit of one partition, oldest first.
    pub async fn commits(&self, partition: i32) -> Result<Vec<Commit>> {
        self.read_commits(&Path::from(format!("_commits/p{partition:03}"))).await
    }

    /// Every commit of every partition.
    pub async fn all_commits(&self) -> Result<Vec<Commit>> {
        self.read_commits(&Path::from("_commits")).await
    }

    async fn read_commits(&self, prefix: &Path) -> Result<Vec<Commit>> {
        let listed: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.error(format!("listing {prefix}"), e))?;
        let mut commits = Vec::with_capacity(listed.len());
        for meta in listed {
            let bytes = self.get(&meta.location).await?;
            let commit: Commit = serde_json::from_slice(&bytes)
                .map_err(|e| self.error(format!("reading commit {}", meta.location), e))?;
            commits.push(commit);
        }
        commits.sort_by_key(|c| (c.partition, c.seq));
        Ok(commits)
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
    pub async fn remove_uncommitted(&self, partition: i32, commits: &[Commit]) -> Result<usize> {
        let Some(latest) = commits.last().map(|c| c.seq) else { return Ok(0) };
        let listed: std::collections::HashSet<&str> =
            commits.iter().flat_map(|c| c.files.iter().map(String::as_str)).collect();
        let own = format!("p{partition:03}-");
        let files: Vec<_> = self.store.list(None).try_collect().await.map_err(|e| self.error("listing the log", e))?;
        let mut removed = 0;
        for meta in files {
            let path = meta.location.to_string();
            let name = meta.location.filename().unwrap_or_default();
            let abandoned = name
                .strip_prefix(&own)
                .and_then(|rest| rest.split('-').next()?.parse::<u64>().ok())
                .is_some_and(|seq| seq <= latest);
            if path.starts_with("hour=") && abandoned && !listed.contains(path.as_str()) {
                self.store.delete(&meta.location).await.map_err(|e| self.error(format!("deleting {path}"), e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Writes `examples` (one file per event hour) and then the commit record. Fails with
    /// [`Error::LogConflict`] when that sequence number was committed by someone else.
    pub async fn commit(&self, request: CommitRequest, examples: Vec<Example>) -> Result<Commit> {
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
        };
        for (hour, examples) in by_hour {
            commit.examples += examples.len() as u64;
            commit.clicked += examples.iter().filter(|e| e.label()).count() as u64;
            let path = format!("hour={hour}/p{:03}-{:010}-{token}.parquet", request.partition, request.seq);
            // Encoding is CPU work: keep it off the async runtime's threads.
            let bytes = tokio::task::spawn_blocking(move || parquet::to_parquet(&examples))
                .await
                .map_err(|e| self.error("encoding Parquet", e))?
                .map_err(|e| self.error("encoding Parquet", e))?;
            self.store
                .put(&Path::from(path.as_str()), PutPayload::from(bytes))
                .await
                .map_err(|e| self.error(format!("writing {path}"), e))?;
            commit.files.push(path);
        }
        let record = serde_json::to_vec_pretty(&commit).expect("commits serialise; this is a bug");
        let path = Path::from(format!("_commits/p{:03}/{:010}.json", request.partition, request.seq));
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&path, PutPayload::from(record), options).await {
            Ok(_) => Ok(commit),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(Error::LogConflict { partition: request.partition, seq: request.seq })
            }
            Err(e) => Err(self.error(format!("writing {path}"), e)),
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
            late_clicks: 0,
            orphan_clicks: 0,
            checkpoint: Checkpoint::default(),
            committed_at_ms: 0,
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
