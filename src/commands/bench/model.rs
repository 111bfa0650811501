//! `adrank bench model`: a registry version scored by raw ONNX Runtime on each execution
//! provider, at the batch sizes the batcher forms, on rows built from the training log the way
//! the server builds them. Reports rows per second, rows per CPU-second of this process and the
//! median run, and checks that every provider scores the same rows as the CPU does.

use std::{path::PathBuf, process::ExitCode, time::Instant};

use adrank_contracts::spec::{FeatureSpec, Transformer};
use adrank_registry::{
    Manifest, OrtConfig, Provider, Registry,
    scoring::{ScoringSession, SessionOptions},
};
use adrank_trainer::{
    data::{LogWindow, RowStream, Window, push_row},
    model::Batch,
};
use anyhow::{Context as _, bail};
use serde::Serialize;

use super::serve::process_cpu_seconds;
use crate::{config::Loaded, table::Table};

/// Measure the raw model on each execution provider.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The model's name in the registry.
    #[arg(long, default_value = "ctr")]
    name: String,
    /// The version: a number or an alias.
    #[arg(long, default_value = "production")]
    at: String,
    /// Execution providers to measure, comma-separated: cpu, cuda. The CPU is always measured
    /// first: it is what the others are checked against.
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    providers: Vec<Provider>,
    /// Rows per model run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64,200,1024,4096")]
    batches: Vec<usize>,
    /// Seconds measured per provider and batch size.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Training-log rows to score (cycled through).
    #[arg(long, default_value_t = 50_000)]
    rows: usize,
    /// The training log the rows come from (default: `ingest.training_log`).
    #[arg(long, value_name = "LOCATION")]
    training_log: Option<String>,
    /// The feature spec.
    /// Default: `features.toml` beside the config file, else `config/features.toml`.
    #[arg(long, value_name = "PATH")]
    spec: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// One provider at one batch size.
#[derive(Debug, Clone, Serialize)]
struct Measurement {
    /// The provider asked for.
    provider: Provider,
    /// Where the session runs (the CPU when the provider could not be had).
    ran_on: Provider,
    batch: usize,
    rows_per_second: f64,
    rows_per_cpu_second: f64,
    /// CPU cores this process kept busy.
    cpu_cores: f64,
    median_run_ms: f64,
    /// Largest |pCTR − CPU pCTR| over the scored rows (0 for the CPU itself).
    max_abs_diff_vs_cpu: f64,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let mut providers = vec![Provider::Cpu];
    for &provider in &args.providers {
        if !providers.contains(&provider) {
            providers.push(provider);
        }
    }
    let config = &loaded.config;
    let spec = FeatureSpec::load(&loaded.spec_path(args.spec.as_deref()))?;
    let registry = Registry::open(&config.registry)?;
    let manifest = registry.version(&args.name, registry.resolve(&args.name, &args.at).await?).await?;
    let onnx = registry.artifact(&manifest.onnx).await?;
    let location = args.training_log.clone().unwrap_or_else(|| config.ingest.training_log.clone());
    let data = LogWindow::open(&location, Window { since_ms: i64::MIN, until_ms: i64::MAX }).await?;
    let ort = config.onnxruntime.clone();
    let measurements = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Measurement>> {
        let rows = logged_rows(&data, &spec, &manifest, args.rows)?;
        if rows.rows() == 0 {
            bail!("the training log at {location} holds no rows (run `adrank demo --quick` or ingest some)");
        }
        eprintln!("{} v{}: {} logged rows", manifest.name, manifest.version, rows.rows());
        measure_all(&onnx, &ort, &rows, &providers, &args.batches, args.seconds)
    })
    .await??;
    let mut table =
        Table::new(["PROVIDER", "RAN ON", "BATCH", "ROWS/S", "ROWS/CPU-S", "CORES", "MEDIAN RUN", "MAX |Δ| VS CPU"]);
    for m in &measurements {
        table.row(vec![
            m.provider.to_string(),
            m.ran_on.to_string(),
            m.batch.to_string(),
            format!("{:.0}", m.rows_per_second),
            format!("{:.0}", m.rows_per_cpu_second),
            format!("{:.2}", m.cpu_cores),
            format!("{:.3} ms", m.median_run_ms),
            format!("{:.2e}", m.max_abs_diff_vs_cpu),
        ]);
    }
    print!("{}", table.render());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&measurements)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let fell_back = measurements.iter().any(|m| m.provider != m.ran_on);
    Ok(if fell_back { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn measure_all(
    onnx: &[u8],
    ort: &OrtConfig,
    rows: &Batch,
    providers: &[Provider],
    batches: &[usize],
    seconds: f64,
) -> anyhow::Result<Vec<Measurement>> {
    let check_rows = batches.iter().copied().max().unwrap_or(1).min(rows.rows());
    let mut reference: Option<Vec<f32>> = None;
    let mut out = Vec::new();
    for &provider in providers {
        let options = SessionOptions { provider, ..SessionOptions::of(ort) };
        let mut session = ScoringSession::load(onnx, ort, options)?;
        let (id_width, dense_width) = (rows.ids.len() / rows.rows(), rows.dense.len() / rows.rows());
        let scores =
            session.score(check_rows, &rows.ids[..check_rows * id_width], &rows.dense[..check_rows * dense_width])?;
        let diff = match &reference {
            None => {
                reference = Some(scores);
                0.0
            }
            Some(cpu) => cpu.iter().zip(&scores).map(|(a, b)| f64::from((a - b).abs())).fold(0.0, f64::max),
        };
        for &batch in batches {
            let speed = raw_speed(&mut session, rows, batch, seconds)?;
            out.push(Measurement {
                provider,
                ran_on: session.provider(),
                batch,
                rows_per_second: speed.rows_per_second,
                rows_per_cpu_second: speed.rows_per_cpu_second,
                cpu_cores: speed.rows_per_second / speed.rows_per_cpu_second,
                median_run_ms: speed.median_run_ms,
                max_abs_diff_vs_cpu: diff,
            });
            eprintln!("{provider} batch {batch}: {:.0} rows/s", speed.rows_per_second);
        }
    }
    Ok(out)
}

/// How fast a session scores.
#[derive(Debug, Clone, Copy)]
pub(super) struct Speed {
    pub(super) rows_per_second: f64,
    pub(super) rows_per_cpu_second: f64,
    pub(super) median_run_ms: f64,
}

/// Raw ONNX Runtime: `batch`-row runs over `rows` (cycled) for about `seconds`, after a warm-up.
/// CPU time is this whole process's: run it while nothing else in the process works.
pub(super) fn raw_speed(
    session: &mut ScoringSession,
    rows: &Batch,
    batch: usize,
    seconds: f64,
) -> anyhow::Result<Speed> {
    let (id_width, dense_width) = (rows.ids.len() / rows.rows(), rows.dense.len() / rows.rows());
    let batches = rows.rows() / batch;
    if batches == 0 {
        bail!("only {} logged rows for batches of {batch}", rows.rows());
    }
    let mut run = |i: usize| -> anyhow::Result<()> {
        let at = i % batches * batch;
        let ids = &rows.ids[at * id_width..(at + batch) * id_width];
        let dense = &rows.dense[at * dense_width..(at + batch) * dense_width];
        session.score(batch, ids, dense)?;
        Ok(())
    };
    (0..20).try_for_each(&mut run)?; // warm-up
    let (cpu, wall) = (process_cpu_seconds(std::process::id())?, Instant::now());
    let mut runs = Vec::new();
    while wall.elapsed().as_secs_f64() < seconds {
        let started = Instant::now();
        run(runs.len())?;
        runs.push(started.elapsed().as_secs_f64());
    }
    let (cpu, wall) = (process_cpu_seconds(std::process::id())? - cpu, wall.elapsed().as_secs_f64());
    let scored = (runs.len() * batch) as f64;
    runs.sort_by(f64::total_cmp);
    Ok(Speed {
        rows_per_second: scored / wall,
        rows_per_cpu_second: scored / cpu.max(1e-9),
        median_run_ms: runs.get(runs.len() / 2).copied().unwrap_or(0.0) * 1e3,
    })
}

/// Up to `limit` rows of the training log, as the trainer (and the server) build them.
pub(super) fn logged_rows(
    data: &LogWindow,
    spec: &FeatureSpec,
    manifest: &Manifest,
    limit: usize,
) -> anyhow::Result<Batch> {
    let transformer = Transformer::new(spec, &manifest.transform_stats)?;
    let mut batch = Batch::default();
    for chunk in RowStream::spawn(data, data.window, |examples| examples) {
        for example in &chunk? {
            push_row(&transformer, example, &mut batch);
            if batch.rows() >= limit {
                return Ok(batch);
            }
        }
    }
    Ok(batch)
}
