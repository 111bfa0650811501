//! `adrank loadtest`: open-loop load on the ranking API with requests from the synthetic world.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use adrank_loadtest::generator::{Arrivals, LATE, RunConfig, RunReport, run};
use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{config::Loaded, table::Table};

/// Send requests on a fixed schedule and measure latency from each intended send time.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server (loopback only); default: `serving.listen`.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Requests per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of load (the warm-up included).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the start that are sent but not measured.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Exponential gaps (an open system of independent users) instead of constant ones.
    #[arg(long)]
    poisson: bool,
    /// Distinct request bodies generated from the world before the run.
    #[arg(long, default_value_t = 2_000)]
    bodies: usize,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// The results, as JSON.
#[derive(Debug, Serialize)]
struct Summary {
    rate: f64,
    achieved_rate: f64,
    scheduled: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    failures: std::collections::BTreeMap<String, u64>,
    late: u64,
    latency_ms: std::collections::BTreeMap<String, f64>,
}

fn summary(rate: f64, report: &RunReport) -> Summary {
    let h = &report.latency_us;
    let latency_ms = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)]
        .into_iter()
        .map(|(name, q)| (name.to_string(), h.value_at_quantile(q) as f64 / 1000.0))
        .chain(std::iter::once(("max".to_string(), h.max() as f64 / 1000.0)))
        .collect();
    Summary {
        rate,
        achieved_rate: report.achieved_rate,
        scheduled: report.scheduled,
        statuses: report.statuses.clone(),
        failures: report.failures.iter().map(|(f, n)| (format!("{f:?}").to_lowercase(), *n)).collect(),
        late: report.late,
        latency_ms,
    }
}

pub(crate) async fn run_command(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    if !(args.duration.is_finite() && args.duration > args.warmup && args.warmup >= 0.0) {
        bail!("--duration {} must be longer than --warmup {}", args.duration, args.warmup);
    }
    let target = args.target.unwrap_or(loaded.config.serving.listen);
    eprintln!("generating {} request bodies from the world …", args.bodies);
    let mut world = super::sim::world(loaded);
    let bodies: Vec<Vec<u8>> = (0..args.bodies.max(1))
        .map(|_| {
            let request = world.next_request();
            serde_json::to_vec(&world.rank_request(&request)).expect("requests serialise")
        })
        .collect();
    let config = RunConfig {
        target,
        path: "/v1/rank".into(),
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        connections: args.connections,
        arrivals: if args.poisson { Arrivals::Poisson } else { Arrivals::Constant },
        timeout: Duration::from_secs(10),
        seed: loaded.config.world.seed,
    };
    eprintln!(
        "{} req/s for {} s at http://{target}/v1/rank over {} connections …",
        args.rate, args.duration, args.connections
    );
    let report = run(&config, Arc::new(bodies)).await?;
    let summary = summary(args.rate, &report);
    let mut table = Table::new(["WHAT", "VALUE"]);
    table
        .row(vec!["rate (target / achieved)".into(), format!("{:.0} / {:.1} req/s", args.rate, summary.achieved_rate)]);
    table.row(vec!["measured requests".into(), summary.scheduled.to_string()]);
    table.row(vec!["statuses".into(), format!("{:?}", summary.statuses)]);
    table.row(vec!["failures".into(), format!("{:?}", summary.failures)]);
    table.row(vec![format!("sent late (> {} ms)", LATE.as_millis()), summary.late.to_string()]);
    for (name, ms) in &summary.latency_ms {
        table.row(vec![format!("latency {name}"), format!("{ms:.2} ms")]);
    }
    print!("{}", table.render());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
