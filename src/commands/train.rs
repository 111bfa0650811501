//! `adrank train`: train a model on a window of the training log and publish it.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use adrank_contracts::{spec::FeatureSpec, training_log::utc_hour};
use adrank_registry::{Change, Registry};
use adrank_trainer::{
    data::LogWindow,
    model::Architecture,
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
    #[arg(long, default_value = "config/features.toml")]
    spec: PathBuf,
    /// Also write the training report as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let config = &loaded.config;
    let spec = FeatureSpec::load(&args.spec)?;
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
    let trained = {
        let (spec, training) = (spec.clone(), training.clone());
        tokio::task::spawn_blocking(move || {
            train(TrainRequest { data: &data, spec: &spec, config: &training, warm_start: warm, progress })
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
        tags: Default::default(),
    };
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
