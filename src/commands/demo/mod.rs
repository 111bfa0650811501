//! `adrank demo`: the whole loop on the local stack, each part the command a person would run.
//! Simulated history goes through Kafka into Redis and the training log; the retraining loop's
//! first cycle makes a model production; then closed-loop traffic flows while the world drifts,
//! the loop retrains on the traffic's own impressions and clicks, each blessed candidate goes
//! through shadow and canary steps, and a deliberately bad candidate is pushed past the gates
//! to be stopped online. It ends with the HTML report: the loop's timeline, CTR and revenue per
//! version over simulated time beside the bid-only, learnable ceiling's and oracle rankings, and
//! a verdict.

mod bad;
mod settings;
mod timeline;
mod watch;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use adrank_loadtest::{
    generator::{self, Api, Arrivals, Progress, RunConfig},
    ranking::Ranking,
    report::{Report, ServerSummary, hours, versions},
};
use adrank_registry::Registry;
use anyhow::{Context as _, bail};
use tokio::process::Child;

use super::child::{adrank, adrank_niced, free_addr, run_step, start_ready, stop};
use crate::config::Loaded;

/// Run the whole loop once: history, a first model, then traffic while the loop retrains,
/// gates, shadows, canaries and promotes; a bad candidate is injected and must be stopped.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Smaller and faster (a few minutes): a day and a half of history, 100 req/s, one promotion.
    #[arg(long)]
    quick: bool,
    /// Simulated days of history before the traffic (default 2; 1.5 with --quick). The first
    /// cycle trains on the newest 24 hours before the 2 it is judged on: with less, some hours
    /// of the day are unseen (the world's CTR varies with the hour) and the gates refuse it.
    #[arg(long)]
    days: Option<f64>,
    /// Requests per second of the closed-loop traffic (default 200; 100 with --quick).
    #[arg(long)]
    rate: Option<f64>,
    /// The most seconds of traffic (default 900; 420 with --quick). The traffic ends sooner once
    /// the bad candidate has been stopped, `--promotions` retrained candidates have been promoted
    /// and the last one has served for a while.
    #[arg(long)]
    duration: Option<f64>,
    /// Retrained candidates to see promoted before the traffic may end (default 2; 1 with
    /// --quick; 0 ends it once the bad candidate is stopped).
    #[arg(long)]
    promotions: Option<u32>,
    /// Where the report goes; default: .adrank/reports/demo-<unix time>.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

const STEPS: u32 = 7;

/// One step's banner.
fn step(n: u32, what: &str) {
    eprintln!("\n\x1b[1m==> [{n}/{STEPS}] {what}\x1b[0m");
}

/// The loop's long-running processes, stopped in reverse order of start.
#[derive(Default)]
struct Processes(Vec<(&'static str, Child)>);

impl Processes {
    /// Stops each; fails when the server did not stop cleanly (its impression log is flushed on
    /// the way out). The others are said to the terminal: a retraining cycle cut short resumes
    /// from its last step the next time the loop runs.
    async fn stop_all(&mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        while let Some((name, child)) = self.0.pop() {
            if let Err(e) = stop(child).await {
                eprintln!("`adrank {name}` did not stop cleanly: {e:#}");
                if name == "serve" {
                    result = Err(e.context("stopping adrank serve"));
                }
            }
        }
        result
    }
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let quick = args.quick;
    let days = args.days.unwrap_or(if quick { 1.5 } else { 2.0 });
    let rate = args.rate.unwrap_or(if quick { 100.0 } else { 200.0 });
    let duration = args.duration.unwrap_or(if quick { 420.0 } else { 900.0 });
    let promotions = args.promotions.unwrap_or(if quick { 1 } else { 2 });
    if !(days.is_finite() && days > 0.0 && rate > 0.0 && duration > 10.0) {
        bail!("--days and --rate must be positive and --duration above 10 s");
    }
    let started = Instant::now();
    let report_dir = args.report.unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        PathBuf::from(format!(".adrank/reports/demo-{now}"))
    });
    let name = loaded.config.retrain.model.clone();
    let registry = Registry::open(&loaded.config.registry)?;
    if !registry.versions(&name).await?.is_empty() {
        bail!(
            "the registry at {} already has versions of `{name}`: the demo's loop starts from nothing. To start \
             over, `adrank down --wipe` stops the stack and deletes its state, the registry, the training log and \
             the Redis keys (reports stay); then run the demo again",
            registry.location(),
        );
    }
    let serve_addr = free_addr()?;
    let settings = settings::loop_settings(serve_addr, quick);
    let ranks = settings::ranks(&settings);

    step(1, &format!("publishing {days} simulated days of history to Kafka (adrank sim bootstrap)"));
    run_step(loaded, &["sim", "bootstrap", "--days", &days.to_string()], &[]).await?;

    step(2, "ingesting it into Redis and the Parquet training log (adrank ingest)");
    run_step(loaded, &["ingest", "--exit-when-idle", "3"], &[]).await?;

    step(
        3,
        &format!(
            "the retraining loop's first cycle: train on {ranks} MPI rank(s), gate, make it production (adrank retrain --promote)"
        ),
    );
    run_step(loaded, &["retrain", "--promote"], &settings).await?;
    let first = registry
        .state(&name)
        .await?
        .aliases
        .get(adrank_registry::PRODUCTION)
        .copied()
        .context("the first cycle did not make a version production: its gates refused it (see above)")?;

    step(4, "a deliberately bad candidate: trained on the same hours with their labels shuffled (adrank train)");
    let bad = bad::train(loaded, &registry, &name).await?;
    eprintln!("v{bad} is published; it will be started by hand, without the gates, once traffic flows");

    step(5, "starting the loop: serve, ingest, retrain --loop, rollout control, and the X-Ray dashboard");
    let mut processes = Processes::default();
    let dashboard = free_addr()?;
    let launched = start_loop(loaded, &settings, (serve_addr, dashboard), &name, &mut processes).await;
    if let Err(e) = launched {
        let _ = processes.stop_all().await;
        return Err(e);
    }
    eprintln!("serving v{first} on http://{serve_addr}; live dashboard: http://{dashboard}/");

    step(
        6,
        &format!(
            "closed-loop traffic at {rate} req/s (at most {duration} s): the world clicks on what it is shown and drifts; \
             the loop retrains, shadows, canaries and promotes"
        ),
    );
    let mut world = super::sim::world(loaded);
    world.replay_baseline_days(days);
    let ranking = Arc::new(Ranking::closed_loop(world, (2.0 * rate) as usize + 16, serve_addr, &Api::rank()));
    let progress = Arc::new(Progress::default());
    let config = RunConfig {
        target: serve_addr,
        api: Api::rank(),
        rate,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::ZERO,
        // Enough that a reply held up by training on the same cores does not queue the next
        // ones behind it on the client.
        connections: 32,
        arrivals: Arrivals::Poisson,
        timeout: Duration::from_secs(10),
        seed: loaded.config.world.seed,
    };
    let load_started_ms = adrank_contracts::events::now_ms();
    let load = tokio::spawn({
        let (ranking, progress, config) = (Arc::clone(&ranking), Arc::clone(&progress), config.clone());
        async move { generator::run(&config, ranking, progress).await }
    });
    let goal = watch::Goal { bad, promotions, settle: Duration::from_secs(if quick { 20 } else { 45 }) };
    let watcher = watch::Watcher::new(registry.clone(), name.clone(), dashboard, goal);
    let injected = watcher.watch(&ranking, &progress, &load).await;
    let run_report = load.await.context("the load task failed")??;
    ranking.finish().await;

    step(7, "stopping the loop's processes (SIGTERM: in-flight work finishes) and writing the report");
    let stopped = processes.stop_all().await;
    let mut report = Report::for_run(
        "adrank demo: the whole loop".into(),
        format!("http://{serve_addr}/v1/rank"),
        "closed loop".into(),
        "poisson".into(),
        config.connections,
        &run_report,
    );
    report.server = ServerSummary::of(&ranking.take_timings(), &run_report);
    report.versions = versions(&ranking.business());
    report.hours = hours(&ranking.hourly());
    report.clicks = Some(ranking.clicks());
    let story = timeline::gather(&registry, &name, load_started_ms, injected?).await?;
    let verdict = timeline::verdict(&story, &report, bad, promotions);
    report.timeline = story.events;
    report.verdict = Some(verdict.line.clone());
    let page = super::loadtest::write_report(&report, &report_dir)?;
    eprint!("\n{}", timeline::render(&report.timeline));
    eprintln!(
        "\nthe whole loop ran in {:.0} s. Open {}; the stack is still up (`adrank down` stops it).",
        started.elapsed().as_secs_f64(),
        page.display()
    );
    println!("\n{}", verdict.line);
    stopped?;
    Ok(if verdict.complete { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Starts the loop's processes, each recorded in `processes` as soon as it runs.
async fn start_loop(
    loaded: &Loaded,
    settings: &[(String, String)],
    (serve_addr, dashboard): (std::net::SocketAddr, std::net::SocketAddr),
    name: &str,
    processes: &mut Processes,
) -> anyhow::Result<()> {
    let listen = serve_addr.to_string();
    let serve = ["serve", "--follow", "production", "--listen", &listen];
    let server = start_ready(loaded, &serve, serve_addr, settings, Duration::from_secs(120)).await?;
    processes.0.push(("serve", server));
    let logs = PathBuf::from(&loaded.config.stack.state_dir).join("demo");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let xray_listen = dashboard.to_string();
    let parts: [(&'static str, Vec<&str>); 4] = [
        ("ingest", vec!["ingest"]),
        ("retrain", vec!["retrain", "--loop"]),
        ("rollout", vec!["rollout", "control", name]),
        ("xray", vec!["xray", "--model", name, "--listen", &xray_listen]),
    ];
    for (what, args) in parts {
        // Their own lines go to a log each; the demo's status line speaks for them.
        let log = logs.join(format!("{what}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        // Training shares the two cores with serving: it yields to it.
        let command =
            if what == "retrain" { adrank_niced(loaded, &args, settings) } else { adrank(loaded, &args, settings) };
        let child = command?
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start adrank {}", args.join(" ")))?;
        eprintln!("adrank {} (log: {})", args.join(" "), log.display());
        processes.0.push((what, child));
    }
    Ok(())
}
