//! `adrank loadtest`: open-loop load on the ranking API with requests from the synthetic world;
//! a rate sweep that finds the knee; closed-loop runs in which the world clicks on what was
//! served. Every run ends with a terminal table, `report.json` and a self-contained
//! `report.html`.

use std::{
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use adrank_loadtest::{
    generator::{Api, Arrivals, Progress, RunConfig, RunReport, Slo, Step, SweepPlan, run},
    ranking::Ranking,
    report::{Report, ServerSummary, SweepSummary, hours, html, versions},
};
use anyhow::{Context as _, bail};

use crate::{config::Loaded, table::Table};

/// Send requests on a fixed schedule and measure latency from each intended send time.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server (loopback only); default: `serving.listen`. With --grpc, closed-loop clicks
    /// still go here.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Rank over gRPC (`adrank.v1.Ranking/Rank`, protobuf bodies, HTTP/2) instead of
    /// `POST /v1/rank`, at --grpc-target.
    #[arg(long)]
    grpc: bool,
    /// With --grpc: the gRPC server (loopback only); default: `serving.grpc_listen`.
    #[arg(long, requires = "grpc", value_name = "ADDR")]
    grpc_target: Option<SocketAddr>,
    /// Requests per second (with --sweep: the first step's).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of load, the warm-up included (with --sweep: per step).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Measure this many requests instead of a duration: the run lasts the warm-up plus
    /// requests / rate (exact with constant arrivals, on average with --poisson).
    #[arg(long, conflicts_with = "sweep")]
    requests: Option<u64>,
    /// Seconds at the start that are sent but not measured.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Exponential gaps (an open system of independent users) instead of constant ones.
    #[arg(long)]
    poisson: bool,
    /// Distinct request bodies generated from the world before the run (open loop).
    #[arg(long, default_value_t = 2_000)]
    bodies: usize,
    /// Closed loop: every request fresh from the world, which clicks on the shown slots with
    /// the true probabilities and sends the clicks to `/v1/events/click`; the report gains
    /// CTR, revenue and regret against the oracle ranking per model version.
    #[arg(long)]
    closed_loop: bool,
    /// Start the world where `sim bootstrap --days` (or `sim history --days`) left it: that
    /// history is replayed (not sent) first, so the load continues it in simulated time.
    #[arg(long, default_value_t = 0.0, value_name = "DAYS")]
    after_days: f64,
    /// Step the rate up from --rate until the SLO breaks, then bisect: reports the knee.
    #[arg(long)]
    sweep: bool,
    /// Sweep: the p99 a step must hold, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    slo_p99_ms: f64,
    /// Sweep: each ramp step offers this many times the previous rate.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// Sweep: the highest rate offered.
    #[arg(long, default_value_t = 100_000.0)]
    max_rate: f64,
    /// Sweep: bisection steps after the first failed step.
    #[arg(long, default_value_t = 3)]
    refine: u32,
    /// Where report.json and report.html go; default: .adrank/reports/loadtest-<unix time>.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

/// Prints a progress line to a terminal every second until dropped.
struct ProgressLine(Option<tokio::task::JoinHandle<()>>);

impl ProgressLine {
    fn start(progress: Arc<Progress>, label: String) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let started = Instant::now();
        Self(Some(tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let r = progress.read();
                eprint!(
                    "\r  {label} {:>5.0} s  {:>7.0} req/s  p99 {:>8.2} ms  errors {}  late {}   ",
                    started.elapsed().as_secs_f64(),
                    (r.done - last) as f64,
                    r.window_p99_ms,
                    r.errors,
                    r.late
                );
                last = r.done;
                let _ = std::io::stderr().flush();
            }
        })))
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            eprintln!();
        }
    }
}

pub(crate) async fn run_command(mut args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    if let Some(requests) = args.requests {
        if requests == 0 || !(args.rate.is_finite() && args.rate > 0.0) {
            bail!("--requests must be at least 1, at a positive --rate");
        }
        // Request k of the schedule is meant at k / rate (k from 1); the measured ones start at
        // the warm-up's end. The run ends half an interval after the last one.
        let first = (args.warmup * args.rate - 1e-9).ceil().max(1.0);
        args.duration = (first + requests as f64 - 0.5) / args.rate;
    }
    if !(args.duration.is_finite() && args.duration > args.warmup && args.warmup >= 0.0) {
        bail!("--duration {} must be longer than --warmup {}", args.duration, args.warmup);
    }
    if args.sweep && !(args.factor > 1.0 && args.slo_p99_ms > 0.0 && args.max_rate >= args.rate) {
        bail!("--sweep needs --factor above 1, a positive --slo-p99-ms and --max-rate at least --rate");
    }
    let target = args.target.unwrap_or(loaded.config.serving.listen);
    if !target.ip().is_loopback() {
        bail!("the target {target} is not a loopback address; load tests only send to this machine");
    }
    let (api, sent_to) = if args.grpc {
        let Some(grpc) = args.grpc_target.or(loaded.config.serving.grpc_listen) else {
            bail!(
                "--grpc needs --grpc-target or serving.grpc_listen: the address `adrank serve --grpc-listen` listens on"
            );
        };
        if !grpc.ip().is_loopback() {
            bail!("the gRPC target {grpc} is not a loopback address; load tests only send to this machine");
        }
        (Api::Grpc, grpc)
    } else {
        (Api::rank(), target)
    };
    let endpoint = match api {
        Api::Grpc => format!("grpc://{sent_to}/adrank.v1.Ranking/Rank"),
        Api::Http(ref path) => format!("http://{sent_to}{path}"),
    };
    let config = RunConfig {
        target: sent_to,
        api: api.clone(),
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        connections: args.connections,
        arrivals: if args.poisson { Arrivals::Poisson } else { Arrivals::Constant },
        timeout: Duration::from_secs(10),
        seed: loaded.config.world.seed,
    };
    if !(args.after_days.is_finite() && args.after_days >= 0.0) {
        bail!("--after-days {} must be zero or more", args.after_days);
    }
    let mut world = super::sim::world(loaded);
    if args.after_days > 0.0 {
        eprintln!("replaying {} simulated days of history in the world …", args.after_days);
        world.replay_baseline_days(args.after_days);
    }
    let ranking = if args.closed_loop {
        // Two seconds of requests ahead of the schedule at the highest rate offered.
        let ahead = (2.0 * if args.sweep { args.max_rate.min(20_000.0) } else { args.rate }) as usize;
        Arc::new(Ranking::closed_loop(world, ahead.max(16), target, &api))
    } else {
        eprintln!("generating {} request bodies from the world …", args.bodies);
        Arc::new(Ranking::fixed(&mut world, args.bodies, &api))
    };
    let mode = if args.closed_loop { "closed loop" } else { "open loop" };

    let (main_run, timings, sweep) = if args.sweep {
        let slo = Slo { p99_ms: args.slo_p99_ms };
        let plan =
            SweepPlan { start_rate: args.rate, factor: args.factor, max_rate: args.max_rate, refine: args.refine };
        let mut steps: Vec<Step> = Vec::new();
        let mut runs: Vec<(RunReport, adrank_loadtest::ranking::ServerTimings)> = Vec::new();
        while let Some(rate) = plan.next_rate(&steps) {
            eprintln!("step {}: {rate:.0} req/s for {} s …", steps.len() + 1, args.duration);
            let progress = Arc::new(Progress::default());
            let line = ProgressLine::start(Arc::clone(&progress), format!("{rate:.0}/s"));
            let report = run(&RunConfig { rate, ..config.clone() }, Arc::clone(&ranking), progress).await?;
            drop(line);
            let step = Step::of(&report, slo, args.duration - args.warmup);
            eprintln!(
                "  achieved {:.1} req/s, p99 {:.2} ms, errors {}, late {}: {}",
                step.achieved_rate,
                step.p99_ms,
                step.errors,
                step.late,
                if step.held { "held" } else { "did not hold" }
            );
            steps.push(step);
            runs.push((report, ranking.take_timings()));
        }
        let summary = SweepSummary::new(slo, plan, steps);
        // The report's latency figures describe the knee (or the first step when none held).
        let shown = summary.knee.and_then(|k| runs.iter().position(|(r, _)| r.rate == k)).unwrap_or(0);
        let (report, timings) = runs.swap_remove(shown);
        (report, timings, Some(summary))
    } else {
        eprintln!(
            "{} req/s for {} s at {endpoint} over {} connections ({mode}) …",
            args.rate, args.duration, args.connections
        );
        let progress = Arc::new(Progress::default());
        let line = ProgressLine::start(Arc::clone(&progress), String::new());
        let report = run(&config, Arc::clone(&ranking), progress).await?;
        drop(line);
        (report, ranking.take_timings(), None)
    };
    ranking.finish().await;

    let mut report = Report::for_run(
        format!("adrank load test: {mode}{}", if sweep.is_some() { ", rate sweep" } else { "" }),
        endpoint,
        mode.into(),
        format!("{:?}", config.arrivals).to_lowercase(),
        args.connections,
        &main_run,
    );
    report.server = ServerSummary::of(&timings, &main_run);
    report.sweep = sweep;
    if args.closed_loop {
        report.versions = versions(&ranking.business());
        report.hours = hours(&ranking.hourly());
        report.clicks = Some(ranking.clicks());
    }
    print!("{}", render_tables(&report));
    let dir = args.report.unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        PathBuf::from(format!(".adrank/reports/loadtest-{now}"))
    });
    let page = write_report(&report, &dir)?;
    println!("report: {} (and report.json beside it)", page.display());
    Ok(ExitCode::SUCCESS)
}

/// Writes `report.json` and `report.html` into `dir` (created when missing); returns the page.
pub(crate) fn write_report(report: &Report, dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let page = dir.join("report.html");
    std::fs::write(&page, html::render(report)).with_context(|| format!("cannot write {}", page.display()))?;
    Ok(page)
}

/// The terminal tables.
fn render_tables(report: &Report) -> String {
    let run = &report.run;
    let mut table = Table::new(["WHAT", "VALUE"]);
    table.row(vec!["rate (offered / achieved)".into(), format!("{:.0} / {:.1} req/s", run.rate, run.achieved_rate)]);
    table.row(vec!["measured requests".into(), run.measured.to_string()]);
    table.row(vec!["statuses".into(), format!("{:?}", run.statuses)]);
    table.row(vec!["failures".into(), format!("{:?}", run.failures)]);
    table.row(vec![format!("sent late (> {} ms)", run.late_threshold_ms), run.late.to_string()]);
    for (name, ms) in &run.latency_ms {
        table.row(vec![format!("latency {name}"), format!("{ms:.2} ms")]);
    }
    if let Some(sweep) = &report.sweep {
        table.row(vec![
            format!("knee (p99 <= {} ms, no errors)", sweep.slo.p99_ms),
            sweep.knee.map_or("none".into(), |k| format!("{k:.0} req/s")),
        ]);
    }
    if let Some(server) = &report.server {
        for (stage, s) in &server.stages {
            table.row(vec![format!("server {stage} p50 / p99"), format!("{:.3} / {:.3} ms", s.p50, s.p99)]);
        }
        table.row(vec!["rows per model run (mean)".into(), format!("{:.0}", server.batch_rows_mean)]);
        table.row(vec!["degraded replies".into(), server.degraded.to_string()]);
    }
    let mut out = table.render();
    if !report.versions.is_empty() {
        let mut business = Table::new([
            "VERSION",
            "REQUESTS",
            "CTR",
            "PCTR / TRUE",
            "RPM",
            "EXPECTED RPM",
            "BID-ONLY RPM",
            "CEILING RPM",
            "ORACLE RPM",
            "VS BID-ONLY",
            "VS CEILING",
        ]);
        for v in &report.versions {
            business.row(vec![
                v.version.clone(),
                v.requests.to_string(),
                format!("{:.4}", v.ctr),
                format!("{:.4} / {:.4}", v.predicted_ctr, v.true_ctr),
                format!("{:.2}", v.rpm),
                format!("{:.2}", v.expected_rpm),
                format!("{:.2}", v.bid_only_rpm),
                format!("{:.2}", v.ceiling_rpm),
                format!("{:.2}", v.oracle_rpm),
                format!("{:.2}x", v.expected_rpm / v.bid_only_rpm),
                format!("{:.2}x", v.expected_rpm / v.ceiling_rpm),
            ]);
        }
        out.push('\n');
        out.push_str(&business.render());
        let mut calibration = Table::new(["VERSION", "BY", "GROUP", "SLOTS", "PREDICTED CTR", "TRUE CTR", "RATIO"]);
        for v in &report.versions {
            for (by, groups) in [("position", &v.calibration_by_position), ("pCTR decile", &v.calibration_by_decile)] {
                for c in groups {
                    calibration.row(vec![
                        v.version.clone(),
                        by.into(),
                        c.group.clone(),
                        c.slots.to_string(),
                        format!("{:.4}", c.predicted_ctr),
                        format!("{:.4}", c.true_ctr),
                        format!("{:.2}", c.ratio()),
                    ]);
                }
            }
        }
        out.push('\n');
        out.push_str(&calibration.render());
    }
    out
}
