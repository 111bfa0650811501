//! `adrank demo`: the whole chain once on the local stack, each step the command a person
//! would run: publish simulated history to Kafka, ingest it into Redis and the training log,
//! train and publish a first model, serve it, and drive a closed-loop load test that ends with
//! the HTML report.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use adrank_contracts::training_log::utc_hour;
use anyhow::bail;

use super::child::{free_addr, run_step, start_server, stop};
use crate::config::Loaded;

/// Run the whole chain once: history, ingest, train, serve, closed-loop load, report.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Small and fast (a few minutes): half a day of history, one epoch, 15 s of load.
    #[arg(long)]
    quick: bool,
    /// Simulated days of history (default 2; 0.5 with --quick).
    #[arg(long)]
    days: Option<f64>,
    /// Training epochs (default `training.epochs`; 1 with --quick).
    #[arg(long)]
    epochs: Option<u32>,
    /// Requests per second of the closed-loop load (default 200; 100 with --quick).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of closed-loop load (default 60; 15 with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Where the report goes; default: .adrank/reports/demo-<unix time>.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

/// One step's banner.
fn step(n: u32, what: &str) {
    eprintln!("\n\x1b[1m==> [{n}/6] {what}\x1b[0m");
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let quick = args.quick;
    let days = args.days.unwrap_or(if quick { 0.5 } else { 2.0 });
    let rate = args.rate.unwrap_or(if quick { 100.0 } else { 200.0 });
    let duration = args.duration.unwrap_or(if quick { 15.0 } else { 60.0 });
    let epochs = args.epochs.or(quick.then_some(1));
    if !(days.is_finite() && days > 0.0 && rate > 0.0 && duration > 2.0) {
        bail!("--days and --rate must be positive and --duration above 2 s");
    }
    let started = Instant::now();
    let report = args.report.unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        PathBuf::from(format!(".adrank/reports/demo-{now}"))
    });
    let days_text = days.to_string();

    step(1, &format!("publishing {days} simulated days of history to Kafka (adrank sim bootstrap)"));
    run_step(loaded, &["sim", "bootstrap", "--days", &days_text], &[]).await?;

    step(2, "ingesting it into Redis and the Parquet training log (adrank ingest)");
    run_step(loaded, &["ingest", "--exit-when-idle", "3"], &[]).await?;

    step(3, "training a first model and making it production (adrank train)");
    let start = loaded.config.world.start_time_ms;
    let since = utc_hour(start);
    // The history up to the last whole hour whose examples are all in the log: the newest
    // impressions wait for their attribution window to close, and the newest part of the
    // window is what validation scores.
    let complete = start + (days * 86_400_000.0) as i64 - 1000 * loaded.config.ingest.attribution_window_secs as i64;
    let until = utc_hour(complete);
    if complete - start < 3_600_000 {
        bail!("--days {days} leaves less than an hour of complete examples to train on");
    }
    let epochs_text = epochs.map(|e| e.to_string());
    let mut train =
        vec!["train", "--since", &since, "--until", &until, "--alias", "production", "--reason", "adrank demo"];
    if let Some(e) = &epochs_text {
        train.extend(["--epochs", e]);
    }
    run_step(loaded, &train, &[]).await?;

    step(4, "serving it (adrank serve --follow production)");
    let addr = free_addr()?;
    let listen = addr.to_string();
    let waiting = Instant::now();
    let server = start_server(loaded, addr, &[], Duration::from_secs(120)).await?;
    eprintln!("serving on http://{addr} (ready after {:.1} s)", waiting.elapsed().as_secs_f64());

    step(
        5,
        &format!(
            "closed-loop load: {rate} req/s for {duration} s; the world clicks on what is shown (adrank loadtest)"
        ),
    );
    let report_text = report.display().to_string();
    let (rate_text, duration_text) = (rate.to_string(), duration.to_string());
    let load = run_step(
        loaded,
        &[
            "loadtest",
            "--closed-loop",
            "--after-days",
            &days_text,
            "--target",
            &listen,
            "--rate",
            &rate_text,
            "--duration",
            &duration_text,
            "--warmup",
            "2",
            "--poisson",
            "--report",
            &report_text,
        ],
        &[],
    )
    .await;

    step(6, "stopping the server (SIGTERM: in-flight requests finish, impressions are flushed)");
    let stopped = stop(server).await;
    load?;
    stopped?;
    eprintln!(
        "\nthe whole chain ran in {:.0} s. Open {}/report.html; the stack is still up (`adrank down` stops it).",
        started.elapsed().as_secs_f64(),
        report.display()
    );
    Ok(ExitCode::SUCCESS)
}
