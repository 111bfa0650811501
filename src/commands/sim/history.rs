//! `adrank sim history`: simulated history straight into the training log.

use std::{process::ExitCode, time::Instant};

use adrank_contracts::training_log::{TrainingLog, utc_hour};
use adrank_loadtest::history::{HistoryOptions, write_history};
use anyhow::bail;

use crate::{config::Loaded, table::Table};

/// Write simulated history to the training log.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Simulated days (fractions allowed).
    #[arg(long, default_value_t = 7.0)]
    days: f64,
    /// The training log to write (default: `ingest.training_log`).
    #[arg(long, value_name = "LOCATION")]
    training_log: Option<String>,
    /// Continue a log that already holds history: the world first replays (unlogged) up to the
    /// log's newest hour, then writes `--days` more after it. Impressions that were still
    /// waiting for their attribution window when the earlier run ended are not written.
    #[arg(long = "continue")]
    continue_log: bool,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let config = &loaded.config;
    if !(args.days.is_finite() && args.days > 0.0) {
        bail!("--days is {}; expected a positive number of simulated days", args.days);
    }
    let location = args.training_log.unwrap_or_else(|| config.ingest.training_log.clone());
    let log = TrainingLog::open(&location)?;
    let span = adrank_trainer::data::log_span(&location).await?;
    if let Some(span) = span
        && !args.continue_log
    {
        bail!(
            "the training log at {location} already holds history ({} .. {} UTC); the world starts at its \
             beginning, so these hours would be written twice: pass --continue to add days after them, or \
             write to a new --training-log",
            utc_hour(span.since_ms),
            utc_hour(span.until_ms)
        );
    }
    eprintln!("building the world ({} users, {} ads) …", config.world.users, config.world.ads);
    let mut world = super::world(loaded);
    if let Some(span) = span {
        let days = (span.until_ms - world.now_ms()) as f64 / 86_400_000.0;
        eprintln!("replaying {days:.2} days the log already holds …");
        world.replay_baseline_days(days);
    }
    let options = HistoryOptions {
        days: args.days,
        attribution_window_ms: config.ingest.attribution_window_secs as i64 * 1000,
        allowed_lateness_ms: config.ingest.allowed_lateness_secs as i64 * 1000,
        commit_examples: 200_000,
    };
    let started = Instant::now();
    let summary = write_history(&mut world, &log, options).await?;
    let mut table = Table::new(["WHAT", "VALUE"]);
    table.row(vec!["training log".into(), location]);
    table.row(vec![
        "simulated".into(),
        format!("{} days: {} to {} UTC", args.days, utc_hour(summary.start_ms), utc_hour(summary.end_ms)),
    ]);
    table.row(vec!["requests".into(), summary.requests.to_string()]);
    table.row(vec!["impressions / clicks".into(), format!("{} / {}", summary.impressions, summary.clicks)]);
    table.row(vec![
        "examples committed".into(),
        format!("{} in {} commits (the newest impressions wait for their window)", summary.examples, summary.commits),
    ]);
    if let Some(q) = summary.oracle {
        table.row(vec![
            "oracle".into(),
            format!("log loss {:.5}, AUC {:.4}, normalised entropy {:.4}", q.log_loss, q.auc, q.normalised_entropy),
        ]);
    }
    table.row(vec!["took".into(), format!("{:.1} s", started.elapsed().as_secs_f64())]);
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}
