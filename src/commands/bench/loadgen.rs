//! `adrank bench loadgen`: how fast one core of the load generator can send on schedule, and
//! whether its latencies agree with wrk's on the same endpoint at the same rate.
//!
//! A trivial HTTP/1.1 endpoint runs on one thread (a single-threaded runtime), the generator on
//! another: on a 2-core machine each owns a core. The generator's rate is stepped up until it
//! no longer holds the offered rate within 1% (or errors appear); its own CPU time is read
//! from /proc for each step. Then the generator and wrk (Debian's package: closed loop, so it
//! is paced with a Lua `delay()` per connection to about the same rate) measure the same
//! endpoint in turn.

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use adrank_loadtest::generator::{
    Api, Arrivals, Cycle, RunConfig, RunReport, Slo, Step, SweepPlan, knee, run, thread_cpu_seconds,
};
use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::table::Table;

/// Arguments of `adrank bench loadgen`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The first rate of the sweep, requests per second.
    #[arg(long, default_value_t = 5_000.0)]
    start_rate: f64,
    /// Seconds per step (one of them warm-up).
    #[arg(long, default_value_t = 6.0)]
    duration: f64,
    /// Keep-alive connections (the generator's and wrk's).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// The rate at which adrank and wrk are compared.
    #[arg(long, default_value_t = 5_000.0)]
    compare_rate: f64,
    /// Connections of each side of the comparison. wrk paces each connection with a timer of
    /// whole milliseconds: few connections keep its bursts small.
    #[arg(long, default_value_t = 5)]
    compare_connections: usize,
    /// Seconds of each side of the comparison.
    #[arg(long, default_value_t = 10.0)]
    compare_duration: f64,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<std::path::PathBuf>,
}

/// Serves `200 ok` to every request on every connection, on the calling thread.
fn trivial_endpoint() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name("trivial-endpoint".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer(socket));
            }
        });
    })?;
    Ok(addr)
}

/// Answers each request on one connection (head, then content-length bytes) with `200 ok`.
async fn answer(mut socket: tokio::net::TcpStream) {
    let _ = socket.set_nodelay(true);
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() < end + 4 + length {
                break;
            }
            buffer.drain(..end + 4 + length);
            if socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                return;
            }
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Runs `config` on a fresh single-threaded runtime on a thread of its own. Returns the report
/// and the CPU seconds of that thread and the pacer's together: the generator's whole cost.
fn on_one_core(config: RunConfig) -> anyhow::Result<(RunReport, f64)> {
    std::thread::Builder::new()
        .name("generator".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let cpu = thread_cpu_seconds();
            let source = Arc::new(Cycle::new([b"{}".to_vec()]));
            let report = runtime.block_on(run(&config, source, Arc::default()))?;
            let own = thread_cpu_seconds() - cpu;
            let pacer = report.pacer_cpu_seconds;
            Ok((report, own + pacer))
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
}

#[derive(Debug, Serialize)]
struct SweepStep {
    #[serde(flatten)]
    step: Step,
    /// Generator CPU seconds per wall second (1.0: the whole core).
    generator_core: f64,
}

#[derive(Debug, Serialize)]
struct Side {
    tool: String,
    rate: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    sweep: Vec<SweepStep>,
    /// The highest rate held within 1% with no errors.
    knee: Option<f64>,
    comparison: Vec<Side>,
}

/// wrk's latency distribution (`--latency`): the 50/90/99% lines, in milliseconds, and its rate.
fn parse_wrk(output: &str) -> Option<(f64, f64, f64, f64)> {
    let value = |label: &str| -> Option<f64> {
        let line = output.lines().find(|l| l.trim_start().starts_with(label))?;
        let text = line.trim_start().strip_prefix(label)?.trim();
        let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
        let number: f64 = number.parse().ok()?;
        Some(match unit {
            "us" => number / 1000.0,
            "ms" => number,
            "s" => number * 1000.0,
            "m" => number * 60_000.0,
            _ => return None,
        })
    };
    let rate =
        output.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok())?;
    Some((rate, value("50%")?, value("90%")?, value("99%")?))
}

pub(crate) async fn run_command(args: Args) -> anyhow::Result<ExitCode> {
    if !(args.duration > 1.0 && args.compare_duration > 1.0 && args.start_rate > 0.0 && args.connections > 0) {
        bail!("--duration and --compare-duration must exceed 1 s; --start-rate and --connections must be positive");
    }
    let addr = trivial_endpoint()?;
    let base = RunConfig {
        target: addr,
        api: Api::Http("/".into()),
        rate: args.start_rate,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs(1),
        connections: args.connections,
        arrivals: Arrivals::Constant,
        timeout: Duration::from_secs(5),
        seed: 1,
    };
    // Only the rate and errors decide: latency on a trivial endpoint is not the question here.
    let slo = Slo { p99_ms: 1_000.0 };
    let plan = SweepPlan { start_rate: args.start_rate, factor: 1.5, max_rate: 1_000_000.0, refine: 3 };
    let (mut steps, mut sweep) = (Vec::new(), Vec::new());
    while let Some(rate) = plan.next_rate(&steps) {
        let config = RunConfig { rate, ..base.clone() };
        let wall = Instant::now();
        let (report, cpu) = tokio::task::spawn_blocking(move || on_one_core(config)).await??;
        let generator_core = cpu / wall.elapsed().as_secs_f64();
        let mut step = Step::of(&report, slo, args.duration - 1.0);
        // The generator's own health is the question here: one core means one core, and a
        // rate held means sent on time (at most 1% more than a millisecond late).
        step.held &= generator_core <= 1.0 && step.late as f64 <= 0.01 * step.requests as f64;
        eprintln!(
            "{rate:>9.0} req/s offered: {:>9.1} achieved, late {}, errors {}, generator core {:.0}% -> {}",
            step.achieved_rate,
            step.late,
            step.errors,
            100.0 * generator_core,
            if step.held { "held" } else { "not held" }
        );
        steps.push(step.clone());
        sweep.push(SweepStep { step, generator_core });
    }
    let knee = knee(&steps).map(|s| s.rate);

    // The comparison: the generator, then wrk paced to the same rate.
    let config = RunConfig {
        rate: args.compare_rate,
        duration: Duration::from_secs_f64(args.compare_duration + 1.0),
        connections: args.compare_connections,
        ..base.clone()
    };
    let (report, _) = tokio::task::spawn_blocking(move || on_one_core(config)).await??;
    let mut comparison = vec![
        Side {
            tool: "adrank, from intended send time".into(),
            rate: report.achieved_rate,
            p50_ms: report.latency_ms(0.5),
            p90_ms: report.latency_ms(0.9),
            p99_ms: report.latency_ms(0.99),
        },
        Side {
            tool: "adrank, from actual send time".into(),
            rate: report.achieved_rate,
            p50_ms: report.service_latency_ms(0.5),
            p90_ms: report.service_latency_ms(0.9),
            p99_ms: report.service_latency_ms(0.99),
        },
    ];
    let delay_ms = (1000.0 * args.compare_connections as f64 / args.compare_rate).round().max(1.0);
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(
        script.path(),
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{{}}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             function delay() return {delay_ms} end\n"
        ),
    )?;
    let output = tokio::process::Command::new("wrk")
        .args([
            "-t1",
            "-c",
            &args.compare_connections.to_string(),
            "-d",
            &format!("{}s", args.compare_duration),
            "--latency",
            "-s",
        ])
        .arg(script.path())
        .arg(format!("http://{addr}/"))
        .output()
        .await
        .context("cannot run wrk: install it (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let (rate, p50, p90, p99) =
        parse_wrk(&text).with_context(|| format!("cannot read wrk's latency distribution from:\n{text}"))?;
    comparison.push(Side {
        tool: format!("wrk 4.1 (closed loop, {delay_ms} ms delay per connection)"),
        rate,
        p50_ms: p50,
        p90_ms: p90,
        p99_ms: p99,
    });

    let mut table = Table::new(["TOOL", "REQ/S", "P50 MS", "P90 MS", "P99 MS"]);
    for side in &comparison {
        table.row(vec![
            side.tool.clone(),
            format!("{:.0}", side.rate),
            format!("{:.3}", side.p50_ms),
            format!("{:.3}", side.p90_ms),
            format!("{:.3}", side.p99_ms),
        ]);
    }
    println!(
        "one generator core held {} (offered rate achieved within 1%, at most 1% sent late, no errors, \
         the generator's threads together using at most one core)\n",
        knee.map_or("no rate".into(), |k| format!("{k:.0} req/s"))
    );
    print!("{}", table.render());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&Results { sweep, knee, comparison })?)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_latency_lines_are_read_in_milliseconds() {
        let output = "  Latency Distribution\n     50%  120.00us\n     75%  200.00us\n     90%    1.50ms\n     99%    2.10s\n\
                      Requests/sec:   4998.73\nTransfer/sec:    300.00KB\n";
        assert_eq!(parse_wrk(output), Some((4998.73, 0.12, 1.5, 2100.0)));
    }
}
