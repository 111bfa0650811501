//! `adrank eval`: a candidate version against a baseline on a held-out window.

use std::{path::PathBuf, process::ExitCode};

use adrank_contracts::{spec::FeatureSpec, training_log::utc_hour};
use adrank_registry::{PRODUCTION, Registry};
use adrank_trainer::{
    data::LogWindow,
    evaluate::{EvalReport, EvalRequest, Metrics, evaluate},
};
use anyhow::Context as _;

use super::window::{DefaultPart, WindowArgs};
use crate::{config::Loaded, table::Table};

/// Evaluate a model version offline.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    window: WindowArgs,
    /// The model name in the registry.
    #[arg(long, default_value = "ctr")]
    name: String,
    /// The version to judge: a number, an alias or `latest`.
    #[arg(long, default_value = "latest")]
    candidate: String,
    /// The version to compare with (default: the production alias, when there is one).
    #[arg(long)]
    baseline: Option<String>,
    /// The feature spec.
    /// Default: `features.toml` beside the config file, else `config/features.toml`.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Also write the report as JSON here (it is always stored with the candidate version).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Print every slice, not only the overall figures.
    #[arg(long)]
    slices: bool,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let config = &loaded.config;
    let spec = FeatureSpec::load(&loaded.spec_path(args.spec.as_deref()))?;
    let registry = Registry::open(&config.registry)?;
    let candidate = registry.version(&args.name, registry.resolve(&args.name, &args.candidate).await?).await?;
    let baseline_version = match &args.baseline {
        Some(reference) => Some(registry.resolve(&args.name, reference).await?),
        None => registry.state(&args.name).await?.aliases.get(PRODUCTION).copied(),
    };
    let baseline = match baseline_version {
        Some(v) if v != candidate.version => Some(registry.version(&args.name, v).await?),
        _ => None,
    };
    let location = args.window.location(&config.ingest.training_log);
    let window = args.window.resolve(&location, DefaultPart::LastDay).await?;
    let data = LogWindow::open(&location, window).await?;
    let report = evaluate(
        &registry,
        EvalRequest {
            data: &data,
            spec: &spec,
            ort: &config.onnxruntime,
            candidate: &candidate,
            baseline: baseline.as_ref(),
        },
    )
    .await?;
    let json = serde_json::to_vec_pretty(&report)?;
    let report_name = match &baseline {
        Some(b) => format!("eval-{}-vs-{}", utc_hour(window.since_ms), b.version),
        None => format!("eval-{}", utc_hour(window.since_ms)),
    };
    let stored = registry.put_report(&args.name, candidate.version, &report_name, json.clone()).await?;
    print!("{}", render(&report, args.slices));
    println!("report stored at {stored} in {}", registry.location());
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn render(report: &EvalReport, slices: bool) -> String {
    let mut out = format!(
        "{} examples, {} clicks, {} .. {} UTC\n",
        report.examples,
        report.clicks,
        utc_hour(report.window.0),
        utc_hour(report.window.1)
    );
    let mut table = Table::new(["MODEL", "SLICE", "EXAMPLES", "AUC", "LOG LOSS", "NE", "VS ORACLE", "CALIBRATION"]);
    let row = |table: &mut Table, name: &str, slice: &str, m: &Metrics| {
        table.row(vec![
            name.into(),
            slice.into(),
            m.examples.to_string(),
            format!("{:.4}", m.auc),
            format!("{:.5}", m.log_loss),
            format!("{:.4}", m.normalised_entropy),
            m.gap_to_oracle.map_or("-".into(), |g| format!("{:+.2}%", 100.0 * g)),
            format!("{:.3}", m.calibration),
        ]);
    };
    for result in &report.rows {
        let name = match result.version {
            Some(v) => format!("{} (v{v})", result.role),
            None => result.role.clone(),
        };
        row(&mut table, &name, "all", &result.overall);
        if slices {
            for (slice, m) in &result.slices {
                row(&mut table, "", slice, m);
            }
        }
    }
    out.push_str(&table.render());
    out
}
