//! `adrank demo`: the whole chain once on the local stack, each step the command a person
//! would run: publish simulated history to Kafka, ingest it into Redis and the training log,
//! train and publish a first model, serve it, and drive a closed-loop load test that ends with
//! the HTML report.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use adrank_featurestore::training_log::utc_hour;
use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    process::{Child, Command},
};

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

/// This executable with the same config file (the environment is inherited).
fn adrank(loaded: &Loaded, args: &[&str]) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut command = Command::new(exe);
    if let Some(file) = &loaded.file {
        command.arg("--config").arg(file);
    }
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    Ok(command)
}

async fn run_step(loaded: &Loaded, args: &[&str]) -> anyhow::Result<()> {
    let status = adrank(loaded, args)?.status().await.with_context(|| format!("cannot run adrank {}", args[0]))?;
    if !status.success() {
        bail!("`adrank {}` failed ({status}); the demo stops here", args.join(" "));
    }
    Ok(())
}

/// Whether `GET /readyz` answers 200.
async fn ready(addr: SocketAddr) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return false };
    let request = format!("GET /readyz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(stream.read_exact(&mut head).await, Ok(_) if head.ends_with(b"200"))
}

/// Stops the server with SIGTERM (it drains and flushes its impression log), SIGKILL after 30 s.
async fn stop(mut server: Child) -> anyhow::Result<()> {
    if let Some(pid) = server.id() {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(30), server.wait()).await {
        Ok(status) => {
            let status = status?;
            if !status.success() {
                bail!("the server exited with {status}");
            }
        }
        Err(_) => {
            server.kill().await?;
            bail!("the server did not stop within 30 s of SIGTERM; killed");
        }
    }
    Ok(())
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
    run_step(loaded, &["sim", "bootstrap", "--days", &days_text]).await?;

    step(2, "ingesting it into Redis and the Parquet training log (adrank ingest)");
    run_step(loaded, &["ingest", "--exit-when-idle", "3"]).await?;

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
    run_step(loaded, &train).await?;

    step(4, "serving it (adrank serve --follow production)");
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
        probe.local_addr()?
    };
    let listen = addr.to_string();
    let mut server = adrank(loaded, &["serve", "--follow", "production", "--listen", &listen])?
        .spawn()
        .context("cannot start adrank serve")?;
    let waiting = Instant::now();
    while !ready(addr).await {
        if let Some(status) = server.try_wait()? {
            bail!("the server exited before it was ready ({status})");
        }
        if waiting.elapsed() > Duration::from_secs(120) {
            bail!("the server at {addr} was not ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
