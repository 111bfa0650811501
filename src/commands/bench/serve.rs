//! `adrank bench serve`: the ranking server beside the raw model, in one run on one machine
//! (Triton onnxruntime_backend #34's question: what does the server cost beyond the model?).
//!
//! 1. Setup, as a person would: simulated history published to a broker of the benchmark's own,
//!    ingested into Redis (under a prefix of its own) and a training log; two versions of the
//!    default DLRM trained from it (`adrank train`, one of them `production`).
//! 2. The server is a child process (`adrank serve`), so its CPU time (from /proc) is its own,
//!    not the load generator's, Redis's or the broker's that share the 2 cores.
//! 3. Saturation: an open-loop rate sweep (`adrank loadtest`'s) finds the highest rate served
//!    with no errors and p99 within the SLO; a run at that rate measures the server's rows per
//!    CPU-second. The raw model's rows per CPU-second are measured in this process with the
//!    same ONNX Runtime settings at the batch sizes the server formed.
//! 4. Half of saturation: latency percentiles and the server's breakdown; the same load while
//!    `production` moves between the two versions 10 times; twice saturation (it must shed with
//!    429 and keep admitted requests fast); resident memory over 100 load/unload cycles.
//! 5. The floor: `adrank bench floor-server` (read the request, one Redis round trip, a real
//!    reply sent back unchanged; same HTTP stack) at the saturation rate. Its CPU per request
//!    beside the model's bounds the overhead ratio any server on this stack reaches here.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use adrank_contracts::{spec::FeatureSpec, training_log::utc_hour};
use adrank_loadtest::{
    generator::{Api, Arrivals, Progress, RunConfig, RunReport, Slo, Step, SweepPlan, cpu_seconds, knee, run},
    ranking::{Ranking, ServerTimings},
    report::ServerSummary,
};
use adrank_registry::{
    Action, Change, Decision, Registry, RegistryConfig,
    scoring::{ScoringSession, SessionOptions},
};
use adrank_trainer::data::{LogWindow, Window};
use anyhow::{Context as _, bail};
use serde::Serialize;

use super::{
    model::{logged_rows, raw_speed},
    stack::{BenchBroker, BenchRedis},
};
use crate::{
    commands::child::{free_addr, get, post, run_step, start_ready, start_server, stop},
    config::Loaded,
    table::Table,
};

/// Measure the ranking server beside the raw model.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Simulated days of history to build features and train from.
    #[arg(long, default_value_t = 0.25)]
    days: f64,
    /// Seconds per sweep step and per measured run (one of them warm-up).
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// The p99 a sweep step must hold to count as served, in milliseconds.
    #[arg(long, default_value_t = 100.0)]
    slo_p99_ms: f64,
    /// Version swaps under half-saturation load.
    #[arg(long, default_value_t = 10)]
    swaps: u32,
    /// Load/unload cycles for the memory measurement.
    #[arg(long, default_value_t = 100)]
    cycles: u32,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Only the cost lines: both APIs' saturation and CPU per request, the raw model and the
    /// floor (no half-load, shadow, swap, overload or memory phases).
    #[arg(long)]
    quick: bool,
    /// The feature spec.
    /// Default: `features.toml` beside the config file, else `config/features.toml`.
    #[arg(long, value_name = "PATH")]
    spec: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// CPU seconds (user + system) of process `pid`, all threads, from /proc.
pub(super) fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    cpu_seconds(&format!("/proc/{pid}/stat")).context("cannot read process CPU time from /proc")
}

/// Resident memory of process `pid` in bytes, from /proc, less the pages its allocator has
/// handed back lazily (`MADV_FREE`, `LazyFree`): those stay counted as resident until the kernel
/// needs them, but the process no longer holds them (src/main.rs, `tune_allocator`).
fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let kb = |field: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no {field} in /proc/{pid}/smaps_rollup"))
    };
    Ok(kb("Rss:")?.saturating_sub(kb("LazyFree:")?) * 1024)
}

/// How many of a process's threads carry this name.
fn threads_named(pid: u32, name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[derive(Debug, Clone, Serialize)]
struct Latency {
    rate: f64,
    achieved_rate: f64,
    requests: u64,
    errors: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// The same over 2xx replies only.
    admitted_p99_ms: f64,
}

impl Latency {
    fn of(report: &RunReport) -> Self {
        Self {
            rate: report.rate,
            achieved_rate: report.achieved_rate,
            requests: report.samples.len() as u64,
            errors: report.errors(),
            statuses: report.statuses.clone(),
            p50_ms: report.latency_ms(0.5),
            p99_ms: report.latency_ms(0.99),
            p999_ms: report.latency_ms(0.999),
            max_ms: report.latency_us.max() as f64 / 1000.0,
            admitted_p99_ms: report.admitted_latency_ms(0.99),
        }
    }
}

#[derive(Debug, Serialize)]
struct Overhead {
    candidates: usize,
    /// The server at the saturation rate: rows scored per second, and per CPU-second of the
    /// server process.
    server_rows_per_second: f64,
    server_cpu_cores: f64,
    server_rows_per_cpu_second: f64,
    /// The batch size the raw model was timed at (the server's median rows per model run).
    raw_batch_rows: usize,
    raw_rows_per_second: f64,
    raw_cpu_cores: f64,
    raw_rows_per_cpu_second: f64,
    /// server rows per CPU-second / raw rows per CPU-second (target at least 0.85).
    ratio: f64,
}

/// The least a server on this stack costs per request (`adrank bench floor-server`: read the
/// request, one Redis round trip, a canned real reply) at the saturation rate, beside the
/// model's own cost per request: the best overhead ratio any such server reaches here.
#[derive(Debug, Serialize)]
struct Floor {
    rate: f64,
    replies: u64,
    errors: u64,
    cpu_us_per_request: f64,
    /// The raw model's CPU per request: candidates / raw rows per CPU-second.
    model_cpu_us_per_request: f64,
    /// The real server's CPU per request at saturation.
    server_cpu_us_per_request: f64,
    /// model / (model + floor).
    ratio_ceiling: f64,
}

/// The gRPC API at its own saturation (same server process, protobuf bodies over HTTP/2).
#[derive(Debug, Serialize)]
struct Grpc {
    sweep: Vec<Step>,
    saturation_rate: f64,
    server_rows_per_second: f64,
    server_cpu_cores: f64,
    server_cpu_us_per_request: f64,
}

/// What the server spends around the model per request, against the floor's whole cost:
/// (server - model) / floor, per API (target at most 2).
#[derive(Debug, Serialize)]
struct AroundTheModel {
    http_us: f64,
    http_over_floor: f64,
    grpc_us: f64,
    grpc_over_floor: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    sweep: Vec<Step>,
    saturation_rate: f64,
    overhead: Overhead,
    grpc: Grpc,
    floor: Floor,
    around_the_model: AroundTheModel,
    /// Where the model ran, and why the GPU lines are absent when they are.
    gpu: String,
    /// The server under load: absent with `--quick`.
    #[serde(flatten)]
    load: Option<Load>,
}

/// The half-load, shadow, swap, overload and memory phases.
#[derive(Debug, Serialize)]
struct Load {
    half_load: Latency,
    breakdown: Option<ServerSummary>,
    shadow: Shadow,
    swaps: u32,
    during_swaps: Latency,
    /// Replies per version during the swaps.
    versions_during_swaps: std::collections::BTreeMap<String, u64>,
    overload: Latency,
    memory_cycles: u32,
    rss_start_bytes: u64,
    rss_after_warm_cycles_bytes: u64,
    rss_end_bytes: u64,
    /// Growth from the warm reading to the end.
    rss_growth: f64,
    /// (cycle, bytes) every 10 cycles.
    rss_series: Vec<(u32, u64)>,
    /// Growth by the least-squares trend of the readings after every cycle from the 10th on.
    rss_trend_growth: f64,
}

/// Production's p99 at half saturation without and with a candidate shadowing it (rollout at
/// its shadow step, `serving.shadow_sample` of the requests copied), pair by pair.
#[derive(Debug, Serialize)]
struct Shadow {
    sample: f64,
    /// (p99 without, p99 with) per pair, milliseconds.
    pairs: Vec<(f64, f64)>,
    /// Each pair's p99 with / without, and their median.
    ratios: Vec<f64>,
    median_ratio: f64,
    /// Copies the candidate scored, and sampled requests dropped (no place free), over every
    /// run with the shadow on.
    scored: u64,
    dropped: u64,
    /// Errors in the runs with the shadow on.
    errors: u64,
}

/// Pairs of half-saturation runs, without and with the shadow.
const SHADOW_PAIRS: usize = 3;

/// A counter of the server's `/metrics`, summed over its label sets matching `labels`.
async fn counter(addr: SocketAddr, name: &str, labels: &str) -> u64 {
    let Some((_, text)) = get(addr, "/metrics").await else { return 0 };
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Starts a rollout of `candidate` held at its shadow step, and waits until the server has it
/// loaded; or ends it, and waits until it is unloaded.
async fn shadowing(registry: &Registry, addr: SocketAddr, candidate: u64, on: bool) -> anyhow::Result<()> {
    let current = registry.rollout("ctr").await?;
    let decision = |expected_seq| Decision {
        expected_seq,
        by: "bench serve".into(),
        reason: "bench serve: shadow cost".into(),
        figures: Default::default(),
    };
    let seq = current.as_ref().map_or(0, |r| r.seq);
    if on {
        registry.start_rollout("ctr", candidate, vec![0, 100], decision(seq)).await?;
    } else {
        registry.act_on_rollout("ctr", Action::RollBack, decision(seq)).await?;
    }
    let waiting = Instant::now();
    loop {
        let loaded = readiness(addr).await.and_then(|r| r["loaded_versions"].as_array().map(|a| a.len())).unwrap_or(0);
        if loaded == if on { 2 } else { 1 } {
            return Ok(());
        }
        if waiting.elapsed() > Duration::from_secs(60) {
            bail!("the server did not follow the shadow rollout (on: {on}) within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sweep's first rate, requests per second.
const SWEEP_START: f64 = 100.0;

/// What every child process shares: the benchmark's broker, Redis prefix, registry and log.
fn environment(broker: &BenchBroker, redis: &BenchRedis, dir: &std::path::Path) -> Vec<(String, String)> {
    [
        ("ADRANK_KAFKA__BROKERS", broker.kafka.brokers.clone()),
        ("ADRANK_KAFKA__CONSUMER_GROUP", broker.kafka.consumer_group.clone()),
        ("ADRANK_REDIS__KEY_PREFIX", redis.config.key_prefix.clone()),
        ("ADRANK_INGEST__TRAINING_LOG", dir.join("log").display().to_string()),
        ("ADRANK_REGISTRY__LOCATION", dir.join("registry").display().to_string()),
        ("ADRANK_SERVING__REGISTRY_POLL_MS", "200".into()),
        ("ADRANK_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

struct Bench<'a> {
    args: &'a Args,
    /// Known once the sweep is done (infinite before).
    saturation: f64,
    addr: SocketAddr,
    api: Api,
    pid: u32,
    ranking: Arc<Ranking>,
}

impl Bench<'_> {
    fn config(&self, rate: f64, seconds: f64, warmup: f64) -> RunConfig {
        // Open-loop overload needs more connections than requests in flight, or the excess
        // waits in the generator instead of reaching the server's admission.
        let connections = if rate > self.saturation { 512 } else { self.args.connections };
        RunConfig {
            target: self.addr,
            api: self.api.clone(),
            rate,
            duration: Duration::from_secs_f64(seconds),
            warmup: Duration::from_secs_f64(warmup),
            connections,
            arrivals: Arrivals::Poisson,
            timeout: Duration::from_secs(10),
            seed: 7,
        }
    }

    /// One run; returns its report, the server timings and the server's CPU seconds.
    async fn run(&self, rate: f64, seconds: f64, warmup: f64) -> anyhow::Result<(RunReport, ServerTimings, f64)> {
        self.ranking.take_timings();
        let cpu = process_cpu_seconds(self.pid)?;
        let report =
            run(&self.config(rate, seconds, warmup), Arc::clone(&self.ranking), Arc::new(Progress::default())).await?;
        let cpu = process_cpu_seconds(self.pid)? - cpu;
        Ok((report, self.ranking.take_timings(), cpu))
    }

    /// The open-loop sweep from [`SWEEP_START`], then a run at the knee it found: the steps,
    /// and the run's report, timings and server CPU seconds.
    async fn saturate(&mut self, label: &str) -> anyhow::Result<(Vec<Step>, RunReport, ServerTimings, f64)> {
        let slo = Slo { p99_ms: self.args.slo_p99_ms };
        let plan = SweepPlan { start_rate: SWEEP_START, factor: 1.5, max_rate: 100_000.0, refine: 3 };
        let mut steps: Vec<Step> = Vec::new();
        while let Some(rate) = plan.next_rate(&steps) {
            let (report, _, _) = self.run(rate, self.args.duration, 1.0).await?;
            let step = Step::of(&report, slo, self.args.duration - 1.0);
            eprintln!(
                "{label} sweep {rate:>7.0} req/s: p99 {:>8.2} ms, errors {}, late {} -> {}",
                step.p99_ms,
                step.errors,
                step.late,
                if step.held { "held" } else { "not held" }
            );
            steps.push(step);
        }
        self.saturation = knee(&steps).map(|s| s.rate).context("the server held no rate of the sweep")?;
        let (report, timings, cpu) = self.run(self.saturation, self.args.duration, 0.0).await?;
        Ok((steps, report, timings, cpu))
    }
}

/// What `/readyz` says.
async fn readiness(addr: SocketAddr) -> Option<serde_json::Value> {
    let (_, body) = get(addr, "/readyz").await?;
    serde_json::from_str(&body).ok()
}

/// The version `/readyz` reports.
async fn serving_version(addr: SocketAddr) -> Option<u64> {
    readiness(addr).await?["model"]["version"].as_u64()
}

/// Whether `/readyz` reports `version` serving and no other version loaded (the previous one
/// unloaded).
async fn only_version(addr: SocketAddr, version: u64) -> bool {
    readiness(addr).await.is_some_and(|ready| {
        ready["model"]["version"].as_u64() == Some(version)
            && ready["loaded_versions"].as_array().is_some_and(|v| v.len() == 1 && v[0].as_u64() == Some(version))
    })
}

/// The least-squares slope of `readings` (bytes per cycle) over their cycles.
fn slope(readings: &[(u32, u64)]) -> f64 {
    let n = readings.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_x = readings.iter().map(|&(c, _)| f64::from(c)).sum::<f64>() / n;
    let mean_y = readings.iter().map(|&(_, b)| b as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(c, b) in readings {
        sxy += (f64::from(c) - mean_x) * (b as f64 - mean_y);
        sxx += (f64::from(c) - mean_x).powi(2);
    }
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// Points `production` at `version` (compare-and-swap on the current state).
async fn promote(registry: &Registry, version: u64, why: &str) -> anyhow::Result<()> {
    let state = registry.state("ctr").await?;
    registry
        .change(
            "ctr",
            Change {
                expected_seq: state.seq,
                set: vec![("production".into(), Some(version))],
                by: "adrank bench serve".into(),
                reason: why.into(),
            },
        )
        .await?;
    Ok(())
}

/// The server under load at half saturation (steady, shadowed, through version swaps), at twice
/// saturation, and its memory over load/unload cycles.
async fn load_phases(
    bench: &Bench<'_>,
    registry: &Registry,
    shadow_sample: f64,
    rss_start: u64,
) -> anyhow::Result<Load> {
    let (args, addr, pid, saturation) = (bench.args, bench.addr, bench.pid, bench.saturation);
    // Half of saturation: steady state, then the same load through version swaps.
    let half = saturation / 2.0;
    let steady_seconds = 2.0 * args.duration;
    let (report, timings, _) = bench.run(half, steady_seconds, 1.0).await?;
    let half_load = Latency::of(&report);
    let breakdown = ServerSummary::of(&timings, &report);
    // Shadow scoring's cost to production at half saturation, pair by pair.
    let (scored_before, dropped_before) = (
        counter(addr, "adrank_serving_shadow_requests_total", "scored").await,
        counter(addr, "adrank_serving_shadow_requests_total", "dropped").await,
    );
    let (mut pairs, mut shadow_errors) = (Vec::new(), 0);
    for _ in 0..SHADOW_PAIRS {
        let (off, _, _) = bench.run(half, args.duration, 1.0).await?;
        shadowing(registry, addr, 2, true).await?;
        let (on, _, _) = bench.run(half, args.duration, 1.0).await?;
        shadowing(registry, addr, 2, false).await?;
        shadow_errors += on.errors();
        pairs.push((off.latency_ms(0.99), on.latency_ms(0.99)));
    }
    let mut ratios: Vec<f64> = pairs.iter().map(|(off, on)| on / off).collect();
    let shadow = Shadow {
        sample: shadow_sample,
        pairs,
        median_ratio: {
            let mut sorted = ratios.clone();
            sorted.sort_by(f64::total_cmp);
            sorted[sorted.len() / 2]
        },
        ratios: std::mem::take(&mut ratios),
        scored: counter(addr, "adrank_serving_shadow_requests_total", "scored").await - scored_before,
        dropped: counter(addr, "adrank_serving_shadow_requests_total", "dropped").await - dropped_before,
        errors: shadow_errors,
    };
    eprintln!(
        "shadow ({:.0}% of requests copied): p99 with / without {:.3} (pairs {:?}), {} copies scored, {} dropped",
        100.0 * shadow.sample,
        shadow.median_ratio,
        shadow.ratios,
        shadow.scored,
        shadow.dropped
    );

    let swap_every = Duration::from_secs_f64(1.5);
    let swap_seconds = 2.0 + swap_every.as_secs_f64() * f64::from(args.swaps) + 2.0;
    let swapper = {
        let registry = registry.clone();
        let swaps = args.swaps;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            for i in 0..swaps {
                let version = if i % 2 == 0 { 2 } else { 1 };
                promote(&registry, version, "bench serve: swap under load").await?;
                tokio::time::sleep(swap_every).await;
            }
            anyhow::Ok(())
        })
    };
    let (report, timings, _) = bench.run(half, swap_seconds, 1.0).await?;
    swapper.await??;
    let during_swaps = Latency::of(&report);
    // Both versions must have answered: otherwise no swap was measured.
    let versions_during_swaps = timings.versions;
    if versions_during_swaps.len() < 2 {
        bail!("only {versions_during_swaps:?} answered during the swaps: the server did not follow the alias");
    }

    // Twice saturation.
    let (report, _, _) = bench.run(2.0 * saturation, args.duration, 1.0).await?;
    let overload = Latency::of(&report);

    // Load/unload cycles: each alias move loads the other version, warms it, swaps it in and
    // unloads the old one.
    let mut current = serving_version(addr).await.unwrap_or(1);
    // (cycle, bytes) after every cycle from the 10th on.
    let mut rss_readings = Vec::new();
    for cycle in 1..=args.cycles {
        let next = if current == 1 { 2 } else { 1 };
        promote(registry, next, "bench serve: load/unload cycle").await?;
        let waiting = Instant::now();
        // Read only once the old version is unloaded: a reading with both versions loaded
        // measures the swap, not what stays behind.
        while !only_version(addr, next).await {
            if waiting.elapsed() > Duration::from_secs(60) {
                bail!("cycle {cycle}: the server did not swap to version {next} and unload the other within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        current = next;
        // The old version's batcher thread frees its session and ends once its queue closes:
        // wait for it (one batcher thread left, the new version's), or the reading may hold both
        // sessions (a step of one model's memory, up at one reading and down at the next).
        while threads_named(pid, adrank_serving::batcher::MODEL_THREAD) > 1 {
            if waiting.elapsed() > Duration::from_secs(60) {
                bail!("cycle {cycle}: the old version's batcher thread did not end within 60 s of the swap");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if cycle >= 10.min(args.cycles) {
            rss_readings.push((cycle, resident_bytes(pid)?));
        }
    }
    let rss_warm = rss_readings.first().map_or(0, |&(_, bytes)| bytes);
    let rss_series: Vec<(u32, u64)> = rss_readings.iter().copied().filter(|(cycle, _)| cycle % 10 == 0).collect();
    // Growth by the trend: the least-squares line through every reading from cycle 10 on,
    // from its value at the first reading to its value at the last, against their mean.
    let rss_trend_growth = match (rss_readings.first(), rss_readings.last()) {
        (Some(&(first, _)), Some(&(last, _))) if last > first => {
            let mean = rss_readings.iter().map(|&(_, b)| b as f64).sum::<f64>() / rss_readings.len() as f64;
            slope(&rss_readings) * f64::from(last - first) / mean
        }
        _ => 0.0,
    };
    // Every cycle above waited for the old version's model thread to end.
    let rss_end = resident_bytes(pid)?;
    Ok(Load {
        half_load,
        breakdown,
        shadow,
        swaps: args.swaps,
        during_swaps,
        versions_during_swaps,
        overload,
        memory_cycles: args.cycles,
        rss_start_bytes: rss_start,
        rss_after_warm_cycles_bytes: rss_warm,
        rss_end_bytes: rss_end,
        rss_growth: rss_end as f64 / rss_warm.max(1) as f64 - 1.0,
        rss_series,
        rss_trend_growth,
    })
}

pub(crate) async fn run_command(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    if !(args.days > 0.0 && args.duration > 2.0 && args.slo_p99_ms > 0.0 && args.connections > 0) {
        bail!("--days, --slo-p99-ms and --connections must be positive and --duration above 2 s");
    }
    let config = &loaded.config;
    let spec = FeatureSpec::load(&loaded.spec_path(args.spec.as_deref()))?;
    let broker = BenchBroker::start(&config.kafka, None).await?;
    let redis = BenchRedis::new(&config.redis).await?;
    let dir = tempfile::tempdir()?;
    let env = environment(&broker, &redis, dir.path());
    let days = args.days.to_string();

    eprintln!("setup: {days} days of history -> Kafka -> Redis and the training log; two DLRM versions");
    run_step(loaded, &["sim", "bootstrap", "--days", &days], &env).await?;
    run_step(loaded, &["ingest", "--exit-when-idle", "2"], &env).await?;
    let start = config.world.start_time_ms;
    let (since, until) = (utc_hour(start), utc_hour(start + (args.days * 86_400_000.0) as i64 - 3_600_000));
    for (alias, reason) in [(Some("production"), "bench serve v1"), (None, "bench serve v2")] {
        let epochs = if alias.is_some() { "1" } else { "2" };
        let mut train = vec!["train", "--since", &since, "--until", &until, "--epochs", epochs, "--reason", reason];
        if let Some(alias) = alias {
            train.extend(["--alias", alias]);
        }
        run_step(loaded, &train, &env).await?;
    }
    let registry = Registry::open(&RegistryConfig { location: dir.path().join("registry").display().to_string() })?;

    let (addr, grpc_addr) = (free_addr()?, free_addr()?);
    let server = start_server(loaded, (addr, Some(grpc_addr)), &env, Duration::from_secs(120)).await?;
    let pid = server.id().context("the server has no pid")?;
    let rss_start = resident_bytes(pid)?;
    let mut world = super::super::sim::world(loaded);
    let candidates = config.world.candidates as usize;
    let ranking = Arc::new(Ranking::fixed(&mut world, 2_000, &Api::rank()));
    let mut bench = Bench { args: &args, saturation: f64::INFINITY, addr, api: Api::rank(), pid, ranking };

    // A warm-up the sweep does not see: connections opened, caches filled, first runs done. (A
    // first step that met a cold server once failed on its start-up alone.)
    bench.run(SWEEP_START, 3.0, 3.0).await?;

    // Saturation, over HTTP.
    let (steps, report, timings, cpu) = bench.saturate("http").await?;
    let saturation = bench.saturation;
    let rows = report.statuses.get(&200).copied().unwrap_or(0) as f64 * candidates as f64;
    let wall = args.duration;
    let raw_batch = timings.batch_rows.value_at_quantile(0.5).max(1) as usize;
    eprintln!(
        "saturation {saturation:.0} req/s: server {:.0} rows/s on {:.2} cores; median model run {raw_batch} rows",
        rows / wall,
        cpu / wall
    );

    // Saturation, over gRPC: the same requests as protobuf, to the same process.
    let mut grpc_bench = Bench {
        args: &args,
        saturation: f64::INFINITY,
        addr: grpc_addr,
        api: Api::Grpc,
        pid,
        ranking: Arc::new(Ranking::fixed(&mut super::super::sim::world(loaded), 2_000, &Api::Grpc)),
    };
    grpc_bench.run(SWEEP_START, 3.0, 3.0).await?;
    let (grpc_steps, grpc_report, _, grpc_cpu) = grpc_bench.saturate("grpc").await?;
    let grpc_replies = grpc_report.statuses.get(&200).copied().unwrap_or(0) as f64;
    let grpc = Grpc {
        sweep: grpc_steps,
        saturation_rate: grpc_bench.saturation,
        server_rows_per_second: grpc_replies * candidates as f64 / wall,
        server_cpu_cores: grpc_cpu / wall,
        server_cpu_us_per_request: 1e6 * grpc_cpu / grpc_replies.max(1.0),
    };
    eprintln!(
        "grpc saturation {:.0} req/s: server {:.0} us CPU per request on {:.2} cores",
        grpc.saturation_rate, grpc.server_cpu_us_per_request, grpc.server_cpu_cores
    );

    // The raw model, same runtime settings, while the server idles.
    let v1 = registry.version("ctr", 1).await?;
    let onnx = registry.artifact(&v1.onnx).await?;
    let location = dir.path().join("log").display().to_string();
    let data = LogWindow::open(&location, Window { since_ms: start, until_ms: start + 30 * 86_400_000 }).await?;
    let (raw_rows_per_second, raw_rows_per_cpu_second) = {
        let (spec, ort) = (spec.clone(), config.onnxruntime.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, f64)> {
            let rows = logged_rows(&data, &spec, &v1, 50_000)?;
            let mut session = ScoringSession::load(&onnx, &ort, SessionOptions::of(&ort))?;
            let speed = raw_speed(&mut session, &rows, raw_batch, 5.0)?;
            Ok((speed.rows_per_second, speed.rows_per_cpu_second))
        })
        .await??
    };
    let server_rows_per_cpu_second = rows / cpu;
    let overhead = Overhead {
        candidates,
        server_rows_per_second: rows / wall,
        server_cpu_cores: cpu / wall,
        server_rows_per_cpu_second,
        raw_batch_rows: raw_batch,
        raw_rows_per_second,
        raw_cpu_cores: raw_rows_per_second / raw_rows_per_cpu_second,
        raw_rows_per_cpu_second,
        ratio: server_rows_per_cpu_second / raw_rows_per_cpu_second,
    };

    let load = if args.quick {
        None
    } else {
        Some(load_phases(&bench, &registry, config.serving.shadow_sample, rss_start).await?)
    };
    let reply = {
        let request = world.next_request();
        let body = serde_json::to_vec(&world.rank_request(&request))?;
        match post(addr, "/v1/rank", &body).await {
            Some((200, reply)) => reply,
            other => bail!("the server did not rank the floor's sample request: {:?}", other.map(|(s, _)| s)),
        }
    };
    stop(server).await?;

    // The floor, at the same rate, on the same machine.
    let reply_path = dir.path().join("floor-reply.json");
    std::fs::write(&reply_path, reply)?;
    let floor_addr = free_addr()?;
    let floor_args =
        ["bench", "floor-server", "--listen", &floor_addr.to_string(), "--reply", &reply_path.display().to_string()];
    let floor_server = start_ready(loaded, &floor_args, floor_addr, &env, Duration::from_secs(30)).await?;
    let floor_bench = Bench {
        addr: floor_addr,
        pid: floor_server.id().context("the floor server has no pid")?,
        ranking: Arc::clone(&bench.ranking),
        ..bench
    };
    // Warmed up apart, so that the measured run's CPU covers exactly its measured requests (a
    // run's warm-up requests are sent but not counted), as in the server's saturation run.
    floor_bench.run(saturation, 3.0, 2.0).await?;
    let (report, _, floor_cpu) = floor_bench.run(saturation, args.duration, 0.0).await?;
    stop(floor_server).await?;
    let replies = report.statuses.get(&200).copied().unwrap_or(0);
    let per_request_us = |rows_per_cpu_second: f64| 1e6 * candidates as f64 / rows_per_cpu_second;
    let (model_us, floor_us) =
        (per_request_us(overhead.raw_rows_per_cpu_second), 1e6 * floor_cpu / replies.max(1) as f64);
    let floor = Floor {
        rate: saturation,
        replies,
        errors: report.statuses.values().sum::<u64>() - replies,
        cpu_us_per_request: floor_us,
        model_cpu_us_per_request: model_us,
        server_cpu_us_per_request: per_request_us(overhead.server_rows_per_cpu_second),
        ratio_ceiling: model_us / (model_us + floor_us),
    };

    let around = |server_us: f64| server_us - model_us;
    let around_the_model = AroundTheModel {
        http_us: around(floor.server_cpu_us_per_request),
        http_over_floor: around(floor.server_cpu_us_per_request) / floor_us,
        grpc_us: around(grpc.server_cpu_us_per_request),
        grpc_over_floor: around(grpc.server_cpu_us_per_request) / floor_us,
    };
    let gpu = if config.onnxruntime.execution_provider == adrank_registry::config::Provider::Cuda {
        format!("ran on CUDA device {}: the server and raw figures above are the GPU's", config.onnxruntime.cuda_device)
    } else {
        match tokio::task::spawn_blocking(adrank_serving::gpu::devices).await? {
            Ok(devices) if !devices.is_empty() => format!(
                "did not run: {} GPU(s) here ({}), but serving ran on the CPU provider; rerun with \
                 ADRANK_ONNXRUNTIME__EXECUTION_PROVIDER=cuda",
                devices.len(),
                devices[0].name
            ),
            Ok(_) => "did not run: no GPU on this machine".into(),
            Err(why) => format!("did not run: no GPU on this machine ({why})"),
        }
    };
    let results =
        Results { sweep: steps, saturation_rate: saturation, overhead, grpc, floor, around_the_model, gpu, load };
    print!("{}", render(&results));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn render(r: &Results) -> String {
    let o = &r.overhead;
    let mut table = Table::new(["WHAT", "VALUE"]);
    let mut row = |what: &str, value: String| table.row(vec![what.to_string(), value]);
    row(
        "saturation (p99 within SLO, no errors)",
        format!("{:.0} req/s x {} candidates", r.saturation_rate, o.candidates),
    );
    row(
        "server at saturation",
        format!(
            "{:.0} rows/s on {:.2} cores: {:.0} rows/CPU-s",
            o.server_rows_per_second, o.server_cpu_cores, o.server_rows_per_cpu_second
        ),
    );
    row(
        "raw ONNX Runtime",
        format!(
            "{:.0} rows/s on {:.2} cores: {:.0} rows/CPU-s (batch {})",
            o.raw_rows_per_second, o.raw_cpu_cores, o.raw_rows_per_cpu_second, o.raw_batch_rows
        ),
    );
    row("server / raw rows per CPU-second", format!("{:.3} (target >= 0.85)", o.ratio));
    let f = &r.floor;
    row(
        "CPU per request: model / server / floor",
        format!(
            "{:.0} / {:.0} / {:.0} us (floor: read, one Redis round trip, canned reply; {} replies, {} errors)",
            f.model_cpu_us_per_request, f.server_cpu_us_per_request, f.cpu_us_per_request, f.replies, f.errors
        ),
    );
    row("best ratio a server on this stack reaches here", format!("{:.3} = model / (model + floor)", f.ratio_ceiling));
    let g = &r.grpc;
    row(
        "gRPC: saturation; server CPU per request",
        format!(
            "{:.0} req/s ({:.0} rows/s on {:.2} cores); {:.0} us",
            g.saturation_rate, g.server_rows_per_second, g.server_cpu_cores, g.server_cpu_us_per_request
        ),
    );
    let a = &r.around_the_model;
    row(
        "around the model per request (server - model): HTTP / gRPC",
        format!(
            "{:.0} / {:.0} us = {:.2}x / {:.2}x the floor (target <= 2x)",
            a.http_us, a.grpc_us, a.http_over_floor, a.grpc_over_floor
        ),
    );
    row("GPU", r.gpu.clone());
    let Some(load) = &r.load else { return table.render() };
    let r = load;
    let h = &r.half_load;
    row(
        "half saturation p50 / p99 / p99.9",
        format!("{:.2} / {:.2} / {:.2} ms at {:.0} req/s, errors {}", h.p50_ms, h.p99_ms, h.p999_ms, h.rate, h.errors),
    );
    if let Some(b) = &r.breakdown {
        for (stage, s) in &b.stages {
            row(&format!("  {stage} p50 / p99"), format!("{:.3} / {:.3} ms", s.p50, s.p99));
        }
    }
    let sh = &r.shadow;
    row(
        &format!("p99 with a shadow ({:.0}% copied) / without", 100.0 * sh.sample),
        format!(
            "{:.3} median of {:?} (pairs of p99 ms {:?}); {} copies scored, {} dropped; errors {}",
            sh.median_ratio, sh.ratios, sh.pairs, sh.scored, sh.dropped, sh.errors
        ),
    );
    let s = &r.during_swaps;
    row(
        &format!("during {} swaps p99", r.swaps),
        format!("{:.2} ms ({:.2}x steady), errors {}", s.p99_ms, s.p99_ms / h.p99_ms, s.errors),
    );
    let v = &r.overload;
    row(
        "at 2x saturation",
        format!(
            "{:?}; admitted p99 {:.2} ms ({:.2}x half-load p99)",
            v.statuses,
            v.admitted_p99_ms,
            v.admitted_p99_ms / h.p99_ms
        ),
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    row(
        &format!("RSS over {} load/unload cycles", r.memory_cycles),
        format!(
            "{:.1} MiB at start, {:.1} after 10, {:.1} at the end: {:+.1}%",
            mib(r.rss_start_bytes),
            mib(r.rss_after_warm_cycles_bytes),
            mib(r.rss_end_bytes),
            100.0 * r.rss_growth
        ),
    );
    let series: Vec<String> = r.rss_series.iter().map(|(c, b)| format!("{c}: {:.0}", mib(*b))).collect();
    row("  RSS MiB by cycle", series.join(", "));
    row(
        "  RSS growth by the trend (every cycle from 10)",
        format!("{:+.1}% (target < 5%)", 100.0 * r.rss_trend_growth),
    );
    table.render()
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_memory_is_read_from_proc() {
        let before = super::resident_bytes(std::process::id()).unwrap();
        let held = vec![1u8; 64 << 20];
        let after = super::resident_bytes(std::process::id()).unwrap();
        assert!(before > 0, "this process has resident memory");
        assert!(after >= before + (60 << 20), "64 MiB touched shows: {before} -> {after}");
        drop(held);
    }
}
