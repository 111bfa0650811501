//! `adrank train`: train a model on a window of the training log and publish it.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use adrank_contracts::{spec::FeatureSpec, training_log::utc_hour};
use adrank_registry::{Change, Registry};
use adrank_trainer::{
    collective::{Collective as _, Mpi},
    data::LogWindow,
    model::Architecture,
    parallel::Parallel,
    publish::{PublishRequest, publish, warm_start},
    train::{TrainRequest, train},
};
use anyhow::Context as _;

use super::window::{DefaultPart, WindowArgs};
use crate::{config::Loaded, table::Table};

/// Train and publish a model.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    window: WindowArgs,
    /// The model name in the registry.
    #[arg(long, default_value = "ctr")]
    name: String,
    /// The architecture: dlrm or logistic (sizes from `[training.model]` when it is the same kind).
    #[arg(long, value_name = "KIND")]
    model: Option<String>,
    /// Warm-start from this version of the model (a number, an alias or `latest`).
    #[arg(long, value_name = "VERSION")]
    parent: Option<String>,
    /// Override `training.epochs`.
    #[arg(long)]
    epochs: Option<u32>,
    /// Override `training.threads` (1: bit-for-bit reproducible).
    #[arg(long)]
    threads: Option<usize>,
    /// Point this alias at the new version (for example `candidate`).
    #[arg(long, value_name = "ALIAS")]
    alias: Option<String>,
    /// Why this version exists (kept in its manifest).
    #[arg(long, default_value = "adrank train")]
    reason: String,
    /// The feature spec.
    /// Default: `features.toml` beside the config file, else `config/features.toml`.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Also write the training report as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Data-parallel across the ranks `mpirun` started (`mpirun -np 2 adrank train
    /// --distributed`): each rank reads its shards of the window, gradients are exchanged every
    /// step, rank 0 publishes.
    #[arg(long)]
    distributed: bool,
    /// Data shards (default: one per rank). The model depends on the shards, not on the ranks:
    /// one rank with `--shards 2` trains the model two ranks train.
    #[arg(long, value_name = "N", requires = "distributed")]
    shards: Option<usize>,
    /// Publish only while this holder holds the retraining lease of the model (the retraining
    /// loop passes its own name, so that a training it launched and then lost cannot publish).
    #[arg(long, value_name = "HOLDER")]
    lease_holder: Option<String>,
    /// A label kept in the manifest, KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
}

/// One line to stderr in one write: mpirun merges the ranks' output, and a line written in
/// pieces would interleave with another rank's.
fn say(line: String) {
    use std::io::Write as _;
    let _ = std::io::stderr().lock().write_all(format!("{line}\n").as_bytes());
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let config = &loaded.config;
    let spec = FeatureSpec::load(&loaded.spec_path(args.spec.as_deref()))?;
    let mut training = config.training.clone();
    if let Some(kind) = &args.model {
        training.model = match (kind.as_str(), &training.model) {
            ("dlrm", dlrm @ Architecture::Dlrm { .. }) => dlrm.clone(),
            ("dlrm", _) => adrank_trainer::TrainingConfig::default().model,
            ("logistic", _) => Architecture::Logistic,
            (other, _) => anyhow::bail!("--model {other:?} is not a model kind; expected dlrm or logistic"),
        };
    }
    training.epochs = args.epochs.unwrap_or(training.epochs);
    training.threads = args.threads.unwrap_or(training.threads);
    let location = args.window.location(&config.ingest.training_log);
    let window = args.window.resolve(&location, DefaultPart::AllButLastDay).await?;
    let data = LogWindow::open(&location, window).await?;
    let registry = Registry::open(&config.registry)?;
    let (parent, warm) = match &args.parent {
        Some(reference) => {
            let version = registry.resolve(&args.name, reference).await?;
            let manifest = registry.version(&args.name, version).await?;
            (Some(version), Some(warm_start(&registry, &manifest).await?))
        }
        None => (None, None),
    };
    eprintln!(
        "training {} on {} .. {} UTC ({} files of {location})",
        serde_json::to_string(&training.model)?,
        utc_hour(window.since_ms),
        utc_hour(window.until_ms),
        data.files().len()
    );
    let progress = std::io::stderr().is_terminal();
    let trained = if args.distributed {
        let mpi = Mpi::init().context("MPI was initialised twice in this process")?;
        let (rank, ranks) = (mpi.rank(), mpi.size());
        let parallel = Parallel { collective: &mpi, shards: args.shards.unwrap_or(ranks) };
        say(format!("rank {rank} of {ranks}: shards {:?} of {}", parallel.owned(), parallel.shards));
        // MPI calls stay on this thread (initialised here, serialised).
        let trained = tokio::task::block_in_place(|| {
            train(TrainRequest { data: &data, spec: &spec, config: &training, warm_start: warm, progress, parallel })
        });
        let trained = match trained {
            Ok(trained) => trained,
            Err(e) => {
                // The other ranks wait in the next exchange: end them all, not only this one.
                say(format!("error: rank {rank}: {e}; ending every rank"));
                mpi.abort(1)
            }
        };
        if rank != 0 {
            say(format!("rank {rank}: trained; rank 0 publishes"));
            return Ok(ExitCode::SUCCESS);
        }
        trained
    } else {
        let (spec, training) = (spec.clone(), training.clone());
        tokio::task::spawn_blocking(move || {
            let parallel = Parallel::local();
            train(TrainRequest { data: &data, spec: &spec, config: &training, warm_start: warm, progress, parallel })
        })
        .await
        .context("the training thread failed")??
    };
    let created_by = std::env::var("USER").unwrap_or_else(|_| "adrank".into());
    let request = PublishRequest {
        name: &args.name,
        spec: &spec,
        ort: &config.onnxruntime,
        created_by: created_by.clone(),
        reason: args.reason.clone(),
        parent,
        tags: args.tags.iter().cloned().collect(),
    };
    if let Some(holder) = &args.lease_holder {
        let lease = registry.newest_lease(&args.name, adrank_trainer::retrain::lease::WHAT).await?;
        match lease {
            Some(l) if l.is_held_by(holder) => {}
            other => anyhow::bail!(
                "not publishing: the retraining lease of `{}` is no longer held by {holder} (now: {}); the loop that \
                 holds it trains this cycle again",
                args.name,
                other.map_or("nobody".into(), |l| l.holder)
            ),
        }
    }
    let manifest = publish(&registry, &trained, request).await?;
    if let Some(alias) = &args.alias {
        let state = registry.state(&args.name).await?;
        let change = Change {
            expected_seq: state.seq,
            set: vec![(alias.clone(), Some(manifest.version))],
            by: created_by,
            reason: format!("adrank train --alias {alias}"),
        };
        registry.change(&args.name, change).await?;
    }
    let report = &trained.report;
    let mut table = Table::new(["EPOCH", "TRAIN LOSS", "VALIDATION LOSS", "SECONDS"]);
    for e in &report.epochs {
        let best = if e.epoch == report.best_epoch { " (kept)" } else { "" };
        table.row(vec![
            format!("{}{best}", e.epoch),
            format!("{:.6}", e.train_loss),
            format!("{:.6}", e.validation_loss),
            format!("{:.1}", e.seconds),
        ]);
    }
    print!("{}", table.render());
    println!(
        "{} examples ({} clicks) trained, {} validated, {} threads, {:.1} s",
        report.train_examples, report.train_clicks, report.validation_examples, report.threads, report.seconds
    );
    println!(
        "published {} version {} (onnx sha256 {}){}",
        manifest.name,
        manifest.version,
        &manifest.onnx.sha256[..16],
        args.alias.as_ref().map(|a| format!(", alias {a}")).unwrap_or_default()
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
