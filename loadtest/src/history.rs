//! Simulated history written straight into a training log: the examples the ingester would
//! write from the same events, without Kafka in between (the same joiner labels them), for the
//! trainer's tests, benchmarks and first model.

use adrank_contracts::Result;
use adrank_contracts::{
    eval::{Quality, quality},
    training_log::{CommitRequest, Joiner, TrainingLog},
};

use crate::world::World;

/// How much history and how it is joined.
#[derive(Debug, Clone, Copy)]
pub struct HistoryOptions {
    /// Simulated days (fractions allowed).
    pub days: f64,
    /// The attribution window and allowed lateness, as the ingester's config has them.
    pub attribution_window_ms: i64,
    pub allowed_lateness_ms: i64,
    /// Examples per commit.
    pub commit_examples: usize,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct HistorySummary {
    pub requests: u64,
    pub impressions: u64,
    pub clicks: u64,
    /// Examples committed: impressions whose window closed (the newest ones still wait, as they
    /// would in the ingester).
    pub examples: u64,
    pub commits: u64,
    /// The truth's quality on the impressions served.
    pub oracle: Option<Quality>,
    /// The simulated span, `[start, end)` in ms.
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Serves `options.days` of baseline traffic (rank by bid) and commits the joined examples to
/// `log` as partition 0, continuing after the commits already there.
pub async fn write_history(world: &mut World, log: &TrainingLog, options: HistoryOptions) -> Result<HistorySummary> {
    const PARTITION: i32 = 0;
    let existing = log.commits(PARTITION).await?;
    let mut seq = existing.last().map_or(0, |c| c.seq + 1);
    let checkpoint = existing.last().map(|c| c.checkpoint.clone()).unwrap_or_default();
    let (mut next_impression, mut next_click) = (checkpoint.impressions_next, checkpoint.clicks_next);
    let mut joiner = Joiner::new(PARTITION, options.attribution_window_ms, options.allowed_lateness_ms, checkpoint);
    let requests = (options.days * 24.0 * f64::from(world.config().requests_per_hour)).round() as u64;
    let mut summary = HistorySummary {
        requests,
        impressions: 0,
        clicks: 0,
        examples: 0,
        commits: 0,
        oracle: None,
        start_ms: world.now_ms(),
        end_ms: 0,
    };
    let mut truth = Vec::new();
    for done in 1..=requests {
        let served = world.serve_baseline();
        for impression in served.impressions {
            let clicked = served.clicks.iter().any(|c| c.impression_id == impression.impression_id);
            truth.push((impression.oracle_p.unwrap_or(f64::NAN), clicked));
            joiner.impression(next_impression, Some(impression));
            next_impression += 1;
            summary.impressions += 1;
        }
        for click in &served.clicks {
            joiner.click(next_click, Some(click));
            next_click += 1;
            summary.clicks += 1;
        }
        if joiner.closed() >= options.commit_examples || (done == requests && joiner.closed() > 0) {
            let (examples, checkpoint) = joiner.take_closed();
            let (late_clicks, orphan_clicks) = joiner.take_counts();
            summary.examples += examples.len() as u64;
            let request = CommitRequest { partition: PARTITION, seq, checkpoint, late_clicks, orphan_clicks };
            log.commit(request, examples).await?;
            seq += 1;
            summary.commits += 1;
        }
    }
    summary.end_ms = world.now_ms();
    summary.oracle = quality(&truth);
    Ok(summary)
}
