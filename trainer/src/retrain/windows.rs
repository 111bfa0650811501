//! Which hours a cycle may use: only those whose labels are final.
//!
//! The ingester writes an impression to the log only once its attribution window and the
//! allowed lateness have passed, and it closes a partition's impressions in event-time order.
//! So a partition that has written an example of hour `H` will write nothing older than `H`
//! again, and every hour before the oldest of the partitions' newest hours is final. This needs
//! no clock (simulated history and compressed time work alike); a partition that stops writing
//! holds the final hours back, which the cycle reports rather than train on a partial hour. A
//! partition that has never written an example does not hold anything back (it may be one that
//! has no traffic): its first examples, if they come, could still fall into a final hour.

use adrank_contracts::training_log::{TrainingLog, file_hour, utc_hour};

use crate::{Result, data::Window};

const HOUR_MS: i64 = 3_600_000;

/// The final part of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalHours {
    /// The first hour with data.
    pub since_ms: i64,
    /// The end of the newest final hour (exclusive).
    pub until_ms: i64,
    /// The partition whose newest hour sets `until_ms`.
    pub slowest_partition: i32,
}

impl FinalHours {
    pub fn hours(&self) -> i64 {
        (self.until_ms - self.since_ms).max(0) / HOUR_MS
    }
}

/// The final hours of the log at `location`, `None` while it has none.
pub async fn final_hours(location: &str) -> Result<Option<FinalHours>> {
    let commits = TrainingLog::open(location)?.all_commits().await?;
    let mut newest: std::collections::BTreeMap<i32, i64> = Default::default();
    let mut first: Option<i64> = None;
    for commit in &commits {
        for hour in commit.files.iter().filter_map(|f| file_hour(f)) {
            let entry = newest.entry(commit.partition).or_insert(hour);
            *entry = (*entry).max(hour);
            first = Some(first.map_or(hour, |f| f.min(hour)));
        }
    }
    let Some((&slowest_partition, &until_ms)) = newest.iter().min_by_key(|(_, hour)| **hour) else {
        return Ok(None);
    };
    let since_ms = first.expect("a partition with an hour sets the first hour; this is a bug");
    Ok((until_ms > since_ms).then_some(FinalHours { since_ms, until_ms, slowest_partition }))
}

/// A cycle's windows: the candidate trains on `train` and is judged on `eval`, the newest final
/// hours, which it never saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub train: (i64, i64),
    pub eval: (i64, i64),
}

impl Plan {
    pub fn train_window(&self) -> Window {
        Window { since_ms: self.train.0, until_ms: self.train.1 }
    }

    pub fn eval_window(&self) -> Window {
        Window { since_ms: self.eval.0, until_ms: self.eval.1 }
    }
}

/// The newest `eval_hours` final hours to evaluate on and up to `train_hours` before them to
/// train on; an error sentence when the log has too few final hours for both.
pub fn plan(hours: FinalHours, train_hours: u32, eval_hours: u32) -> Result<Plan, String> {
    let eval_since = hours.until_ms - i64::from(eval_hours) * HOUR_MS;
    let train_since = (eval_since - i64::from(train_hours) * HOUR_MS).max(hours.since_ms);
    if eval_since - train_since < HOUR_MS {
        return Err(format!(
            "the training log has {} final hours ({} .. {} UTC; partition {} is the furthest behind); a cycle \
             needs {eval_hours} to evaluate on and at least one more to train on",
            hours.hours(),
            utc_hour(hours.since_ms),
            utc_hour(hours.until_ms),
            hours.slowest_partition
        ));
    }
    Ok(Plan { train: (train_since, eval_since), eval: (eval_since, hours.until_ms) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00

    #[test]
    fn the_newest_final_hours_evaluate_and_the_ones_before_train() {
        let hours = FinalHours { since_ms: T0, until_ms: T0 + 100 * HOUR_MS, slowest_partition: 0 };
        let plan = plan(hours, 48, 6).unwrap();
        assert_eq!(plan.eval, (T0 + 94 * HOUR_MS, T0 + 100 * HOUR_MS));
        assert_eq!(plan.train, (T0 + 46 * HOUR_MS, T0 + 94 * HOUR_MS));
        // A short log trains on what it has before the evaluation hours.
        let short = FinalHours { since_ms: T0, until_ms: T0 + 10 * HOUR_MS, slowest_partition: 0 };
        assert_eq!(super::plan(short, 48, 6).unwrap().train, (T0, T0 + 4 * HOUR_MS));
        let too_short = FinalHours { since_ms: T0, until_ms: T0 + 6 * HOUR_MS, slowest_partition: 3 };
        let message = super::plan(too_short, 48, 6).unwrap_err();
        assert!(message.contains("6 final hours") && message.contains("partition 3"), "{message}");
    }

    #[tokio::test]
    async fn final_hours_stop_at_the_slowest_partitions_newest_hour() {
        use adrank_contracts::training_log::{CommitRequest, Example};
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().display().to_string();
        let log = TrainingLog::open(&location).unwrap();
        assert_eq!(final_hours(&location).await.unwrap(), None);
        let example = |partition: i32, ms: i64| {
            let mut impression = adrank_contracts::events::Impression::example("i", Default::default());
            impression.event_time_ms = ms;
            Example { impression, partition, offset: 0, clicks: 0, first_click_ms: None }
        };
        let commit = |partition: i32, seq: u64| CommitRequest {
            partition,
            seq,
            checkpoint: Default::default(),
            late_clicks: 0,
            orphan_clicks: 0,
        };
        // Partition 0 has written up to hour 9, partition 1 only up to hour 5 (its hour 5 may
        // still grow): hours 0 .. 5 are final.
        log.commit(commit(0, 0), vec![example(0, T0 + 1_000), example(0, T0 + 9 * HOUR_MS + 5)]).await.unwrap();
        log.commit(commit(1, 0), vec![example(1, T0 + 2 * HOUR_MS), example(1, T0 + 5 * HOUR_MS + 7)]).await.unwrap();
        let hours = final_hours(&location).await.unwrap().unwrap();
        assert_eq!(hours, FinalHours { since_ms: T0, until_ms: T0 + 5 * HOUR_MS, slowest_partition: 1 });
    }
}
