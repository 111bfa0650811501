//! `adrank bench train`: training throughput on N MPI ranks beside one rank reading the same
//! shards (one thread each, the same model bit for bit), pair by pair, on simulated history;
//! and, with `--pytorch`, the same DLRM trained by PyTorch on the same encoded rows.

use std::{path::PathBuf, process::ExitCode};

use adrank_contracts::training_log::{TrainingLog, utc_hour};
use adrank_loadtest::history::{HistoryOptions, write_history};
use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{config::Loaded, table::Table};

/// Training throughput: ranks against one rank, and against PyTorch.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Simulated days of history to train on (the configured world).
    #[arg(long, default_value_t = 1.0)]
    days: f64,
    /// Epochs per run.
    #[arg(long, default_value_t = 1)]
    epochs: u32,
    /// Pairs of runs (one rank, N ranks), alternating which goes first.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Ranks of the parallel run.
    #[arg(long, default_value_t = 2)]
    ranks: usize,
    /// The launcher (default: `[training] mpi_launcher`); `-np N` is appended.
    #[arg(long, value_name = "COMMAND")]
    launcher: Option<String>,
    /// Also train the same DLRM with PyTorch on the rows of the one-rank runs (this Python must
    /// import torch and numpy), one thread each, and compare examples per second.
    #[arg(long, value_name = "PYTHON")]
    pytorch: Option<PathBuf>,
    /// The feature spec.
    /// Default: `features.toml` beside the config file, else `config/features.toml`.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// One training run.
#[derive(Debug, Clone, Serialize)]
struct Run {
    round: u32,
    ranks: usize,
    examples: u64,
    seconds: f64,
    examples_per_second: f64,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let config = &loaded.config;
    if args.ranks < 2 || args.rounds == 0 || args.epochs == 0 {
        bail!("--ranks must be at least 2, --rounds and --epochs at least 1");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let log_location = dir.path().join("log").display().to_string();
    let log = TrainingLog::open(&log_location)?;
    let mut world = crate::commands::sim::world(loaded);
    let options = HistoryOptions {
        days: args.days,
        attribution_window_ms: config.ingest.attribution_window_secs as i64 * 1000,
        allowed_lateness_ms: config.ingest.allowed_lateness_secs as i64 * 1000,
        commit_examples: 20_000,
    };
    let summary = write_history(&mut world, &log, options).await?;
    let (since, until) = (utc_hour(summary.start_ms), utc_hour(summary.end_ms));
    eprintln!("{} examples of simulated history, {since} .. {until} UTC", summary.examples);
    let launcher = args.launcher.clone().unwrap_or_else(|| config.training.mpi_launcher.clone());
    let launch = adrank_trainer::retrain::Launch {
        exe: std::env::current_exe()?,
        config: loaded.file.clone(),
        spec: loaded.spec_path(args.spec.as_deref()),
    };
    let mut runs = Vec::new();
    let mut train_window = None;
    for round in 1..=args.rounds {
        let order = if round % 2 == 1 { [1, args.ranks] } else { [args.ranks, 1] };
        for ranks in order {
            let report = dir.path().join(format!("report-{round}-{ranks}.json"));
            let mut command = launch.command(&launcher, ranks)?;
            command
                .args(["train", "--distributed", "--threads", "1", "--shards", &args.ranks.to_string()])
                .args(["--epochs", &args.epochs.to_string(), "--name", "bench"])
                .args(["--training-log", &log_location, "--since", &since, "--until", &until])
                .arg("--json")
                .arg(&report)
                .env("ADRANK_REGISTRY__LOCATION", dir.path().join("registry"))
                .stdout(std::process::Stdio::null());
            let status = command.status().await.with_context(|| format!("cannot start `{launcher}`"))?;
            if !status.success() {
                bail!("the {ranks}-rank training run failed ({status})");
            }
            let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
            let epochs = report["epochs"].as_array().context("the report has epochs")?;
            let seconds: f64 = epochs.iter().filter_map(|e| e["seconds"].as_f64()).sum();
            let examples = report["train_examples"].as_u64().unwrap_or(0) * epochs.len() as u64;
            let run = Run { round, ranks, examples, seconds, examples_per_second: examples as f64 / seconds };
            train_window =
                report["train_window"].as_array().and_then(|w| Some((w.first()?.as_i64()?, w.get(1)?.as_i64()?)));
            eprintln!("round {round}: {ranks} rank(s): {:.0} examples/s", run.examples_per_second);
            runs.push(run);
        }
    }
    let mut table = Table::new(["ROUND", "1 RANK EX/S", "N RANKS EX/S", "RATIO"]);
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        let speed = |ranks| runs.iter().find(|r| r.round == round && r.ranks == ranks).map(|r| r.examples_per_second);
        let (one, many) = (speed(1).unwrap_or(f64::NAN), speed(args.ranks).unwrap_or(f64::NAN));
        ratios.push(many / one);
        table.row(vec![round.to_string(), format!("{one:.0}"), format!("{many:.0}"), format!("{:.2}x", many / one)]);
    }
    print!("{}", table.render());
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{} ranks vs 1 rank, one thread each, {} shards, the same model: median {:.2}x (of {} pairs; the bound is {}x)",
        args.ranks,
        args.ranks,
        sorted[sorted.len() / 2],
        sorted.len(),
        args.ranks
    );
    let pytorch = match &args.pytorch {
        None => None,
        Some(python) => {
            let window = train_window.context("no run reported its training window")?;
            let adrank_one_rank: Vec<f64> =
                runs.iter().filter(|r| r.ranks == 1).map(|r| r.examples_per_second).collect();
            Some(against_pytorch(python, &args, loaded, dir.path(), window, &adrank_one_rank).await?)
        }
    };
    if let Some(path) = &args.json {
        let json =
            serde_json::json!({ "runs": runs, "ratios": ratios, "examples": summary.examples, "pytorch": pytorch });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The rows of the one-rank runs' training window, encoded with the statistics of the version
/// they published, trained by PyTorch in the same run on the same machine.
async fn against_pytorch(
    python: &std::path::Path,
    args: &Args,
    loaded: &Loaded,
    dir: &std::path::Path,
    (since_ms, until_ms): (i64, i64),
    adrank: &[f64],
) -> anyhow::Result<serde_json::Value> {
    use adrank_contracts::spec::{FeatureSpec, Transformer};
    use adrank_trainer::{
        data::{LogWindow, RowStream, Window, push_row},
        model::{Architecture, Batch, InputShape},
    };
    let config = &loaded.config.training;
    let Architecture::Dlrm { embedding_dim, bottom, top, wide } = &config.model else {
        bail!("--pytorch compares DLRM training; [training.model] is not a DLRM");
    };
    let spec = FeatureSpec::load(&loaded.spec_path(args.spec.as_deref()))?;
    let registry = adrank_registry::Registry::open(&adrank_registry::RegistryConfig {
        location: dir.join("registry").display().to_string(),
    })?;
    let manifest = registry.versions("bench").await?.pop().context("the runs published no version")?;
    let transformer = std::sync::Arc::new(Transformer::new(&spec, &manifest.transform_stats)?);
    let window = Window { since_ms, until_ms };
    let data = LogWindow::open(&dir.join("log").display().to_string(), window).await?;
    let mut batch = Batch::default();
    for chunk in RowStream::spawn(&data, window, |examples| examples) {
        for example in &chunk? {
            push_row(&transformer, example, &mut batch);
        }
    }
    let prefix = dir.join("rows");
    std::fs::write(prefix.with_extension("ids"), batch.ids.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
    let f32s = |values: &[f32]| values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(prefix.with_extension("dense"), f32s(&batch.dense))?;
    std::fs::write(prefix.with_extension("labels"), f32s(&batch.labels))?;
    let shape = InputShape::of(&spec);
    let meta = serde_json::json!({
        "rows": batch.rows(),
        "cardinalities": shape.id_cardinalities,
        "dense_width": shape.dense_width,
        "embedding_dim": embedding_dim,
        "bottom": bottom,
        "top": top,
        "wide": wide,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "embedding_learning_rate": config.embedding_learning_rate,
        "threads": 1,
        "seed": config.seed,
    });
    let meta_path = dir.join("rows.json");
    std::fs::write(&meta_path, serde_json::to_vec(&meta)?)?;
    let script = dir.join("pytorch_dlrm.py");
    std::fs::write(&script, include_str!("pytorch_dlrm.py"))?;
    // As many PyTorch runs as adrank had one-rank runs: medians against medians.
    let mut torch_runs = Vec::new();
    for _ in 0..adrank.len() {
        let output = tokio::process::Command::new(python)
            .arg(&script)
            .arg(&meta_path)
            .arg(&prefix)
            .output()
            .await
            .with_context(|| format!("cannot run {}", python.display()))?;
        if !output.status.success() {
            bail!("PyTorch's run failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let run: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        eprintln!("PyTorch: {:.0} examples/s", run["examples_per_second"].as_f64().unwrap_or(f64::NAN));
        torch_runs.push(run);
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let theirs = median(torch_runs.iter().filter_map(|r| r["examples_per_second"].as_f64()).collect());
    let ours = median(adrank.to_vec());
    // adrank's own arithmetic on the same rows in memory, as many times.
    let mut in_memory = Vec::new();
    for _ in 0..adrank.len() {
        let (rows, shape, config) = (batch.clone(), shape.clone(), config.clone());
        let seconds =
            tokio::task::spawn_blocking(move || adrank_trainer::train::epoch_in_memory(&config, &shape, &rows).1)
                .await
                .context("the in-memory epoch failed")?;
        eprintln!("adrank, rows in memory: {:.0} examples/s", batch.rows() as f64 / seconds);
        in_memory.push(batch.rows() as f64 / seconds);
    }
    let ours_in_memory = median(in_memory.clone());
    println!(
        "DLRM training, one thread: adrank {ours:.0} examples/s (median of its one-rank runs, reading Parquet, \
         validation included), {ours_in_memory:.0} examples/s on the rows in memory, vs PyTorch {} {theirs:.0} \
         examples/s (median of {} runs, rows in memory): {:.2}x, {:.2}x in memory",
        torch_runs[0]["torch"].as_str().unwrap_or("?"),
        torch_runs.len(),
        ours / theirs,
        ours_in_memory / theirs
    );
    Ok(
        serde_json::json!({ "pytorch": torch_runs, "adrank_examples_per_second": ours, "pytorch_examples_per_second": theirs, "ratio": ours / theirs }),
    )
}
