//! A simulated month of commits, compacted daily: what loading a partition reads stays flat,
//! every example is read back once, and readers that listed before a compaction keep working.

use super::*;
use crate::training_log::{Checkpoint, CommitRequest, Example};

const T0: i64 = 1_767_225_600_000;
const HOUR: i64 = 3_600_000;

fn example(offset: i64, time: i64) -> Example {
    let mut impression = crate::events::Impression::example(&format!("i{offset}"), Default::default());
    impression.event_time_ms = time;
    Example { impression, partition: 0, offset, clicks: u32::from(offset % 7 == 0), first_click_ms: None }
}

/// Commit `seq`: three examples of hour `seq`, and every fourth commit one more of the hour
/// before (a late close), so that some hours have files from two commits.
async fn commit(log: &TrainingLog, seq: u64, next_offset: &mut i64) -> Commit {
    let hour = T0 + seq as i64 * HOUR;
    let mut examples: Vec<Example> = (0..3).map(|k| example(*next_offset + k, hour + k * 20 * 60_000)).collect();
    *next_offset += 3;
    if seq % 4 == 3 {
        examples.push(example(*next_offset, hour - HOUR + 59 * 60_000));
        *next_offset += 1;
    }
    let checkpoint =
        Checkpoint { impressions_resume: *next_offset, impressions_next: *next_offset, ..Checkpoint::default() };
    let request = CommitRequest { partition: 0, seq, checkpoint, late_clicks: 1, orphan_clicks: 0 };
    log.commit(request, examples).await.unwrap()
}

fn entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[tokio::test]
async fn a_month_of_commits_loads_flat_and_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = TrainingLog::open(&dir.path().display().to_string()).unwrap();
    let (days, per_day) = (30u64, 24u64);
    let mut next_offset = 0;
    let mut loaded = Vec::new();
    let mut listed_before: Option<Vec<Commit>> = None;
    for day in 0..days {
        for hour in 0..per_day {
            commit(&log, day * per_day + hour, &mut next_offset).await;
        }
        let commits = log.commits(0).await.unwrap();
        loaded.push(commits.len());
        if day == 10 {
            listed_before = Some(commits.clone());
        }
        let compacted = log.compact(0, &commits).await.unwrap().expect("a day of commits to compact");
        assert_eq!(compacted.commits, per_day as usize, "day {day}");
        assert_eq!(compacted.snapshot.compacts, (day + 1) * per_day);
        assert_eq!(compacted.snapshot.seq, (day + 1) * per_day - 1);
        // The commit records it replaced are gone; one snapshot is left.
        assert_eq!(entries(&dir.path().join("_commits/p000")), 0, "day {day}");
        assert_eq!(entries(&dir.path().join("_snapshots/p000")), 1, "day {day}");
        if day == 10 {
            // A reader that listed before this compaction still reads what it listed.
            let old = listed_before.take().unwrap();
            assert_eq!(log.read(&old).await.unwrap().len() as u64, old.iter().map(|c| c.examples).sum::<u64>());
            listed_before = Some(old);
        }
    }
    // What a load reads: one snapshot and the commits of the day so far, whatever the month.
    assert!(loaded.iter().all(|&n| n <= per_day as usize + 1), "records read at load: {loaded:?}");
    assert_eq!(loaded[1], loaded[29], "day 2 and day 30 read as much");

    let commits = log.commits(0).await.unwrap();
    assert_eq!(commits.len(), 1);
    let snapshot = &commits[0];
    assert_eq!(snapshot.checkpoint.impressions_next, next_offset);
    assert_eq!(snapshot.late_clicks, days * per_day);
    let examples = log.read(&commits).await.unwrap();
    assert_eq!(examples.len() as i64, next_offset, "every example once");
    assert_eq!(snapshot.examples, next_offset as u64);
    assert_eq!(snapshot.clicked, examples.iter().filter(|e| e.label()).count() as u64);
    assert_eq!(snapshot.outcomes, crate::training_log::outcomes::count(&examples), "outcomes summed");
    let mut offsets: Vec<i64> = examples.iter().map(|e| e.offset).collect();
    offsets.sort_unstable();
    assert!(offsets.iter().enumerate().all(|(i, &o)| i as i64 == o), "offsets 0..{next_offset}, each once");
    // One file per hour: the hours two commits wrote were merged.
    let hours = (days * per_day) as usize;
    assert_eq!(snapshot.files.len(), hours);
    let mut on_disk = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with("hour=") {
            on_disk += entries(&entry.path());
        }
    }
    // The hours' files, and the last compaction's retired ones (kept for readers until the next).
    assert_eq!(on_disk, hours + snapshot.retired.len());
    // Day 10's listing, read after that day's compaction; the next one deleted what it retired.
    let old = listed_before.unwrap();
    assert!(log.read(&old).await.is_err(), "retired files are deleted one compaction later");
}

#[tokio::test]
async fn a_commit_a_snapshot_covers_is_ignored_and_nothing_to_compact_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let log = TrainingLog::open(&dir.path().display().to_string()).unwrap();
    let mut next_offset = 0;
    commit(&log, 0, &mut next_offset).await;
    // One commit alone is not worth a snapshot.
    assert!(log.compact(0, &log.commits(0).await.unwrap()).await.unwrap().is_none());
    for seq in 1..4 {
        commit(&log, seq, &mut next_offset).await;
    }
    let commits = log.commits(0).await.unwrap();
    let compacted = log.compact(0, &commits).await.unwrap().unwrap();
    assert_eq!(compacted.snapshot.seq, 3);
    // A second compaction of the same listing finds the snapshot there: no second one.
    assert!(log.compact(0, &commits).await.unwrap().is_none());
    // A zombie that still believed seq 2 was free writes it again: the snapshot stands for it.
    let mut zombie_offset = 100;
    commit(&log, 2, &mut zombie_offset).await;
    let after = log.commits(0).await.unwrap();
    assert_eq!(after, std::slice::from_ref(&compacted.snapshot));
    // Commits go on after the snapshot, and the next compaction folds them in.
    commit(&log, 4, &mut next_offset).await;
    let commits = log.commits(0).await.unwrap();
    assert_eq!(commits.iter().map(|c| (c.seq, c.is_snapshot())).collect::<Vec<_>>(), [(3, true), (4, false)]);
    let next = log.compact(0, &commits).await.unwrap().unwrap();
    assert_eq!((next.snapshot.seq, next.snapshot.compacts, next.commits), (4, 5, 1));
    assert_eq!(log.read(&log.commits(0).await.unwrap()).await.unwrap().len() as i64, next_offset);
}
