//! `adrank registry`: list, show, import and alias model versions.

use std::{path::PathBuf, process::ExitCode};

use adrank_contracts::{
    spec::{FeatureSpec, TransformStats, Transformer},
    training_log::utc_hour,
};
use adrank_registry::{Change, Draft, Registry};
use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::{config::Loaded, table::Table};

/// The model registry.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the models, or one model's versions with its aliases.
    List {
        /// A model name.
        name: Option<String>,
    },
    /// Print one version's manifest (JSON).
    Show {
        name: String,
        /// A number, an alias or `latest`.
        #[arg(value_name = "VERSION")]
        reference: String,
    },
    /// Register an ONNX file made elsewhere (for example exported from PyTorch). Its inputs must
    /// be `ids` int64 [batch, id features] and `dense` float32 [batch, numbers], its output
    /// `pctr` float32 [batch, 1], as the feature spec defines them, and it must take every id
    /// feature's largest id. Weights kept in files beside it are read into the version.
    Import {
        name: String,
        /// The ONNX file.
        file: PathBuf,
        /// Standardisation constants (JSON: {"standardise": {"feature": {"mean": m, "std": s}}}),
        /// required when the spec standardises.
        #[arg(long, value_name = "PATH")]
        stats: Option<PathBuf>,
        /// The feature spec the model reads.
        /// Default: `features.toml` beside the config file, else `config/features.toml`.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Why it is imported.
        #[arg(long, default_value = "adrank registry import")]
        reason: String,
        /// Point this alias at the new version (`production` makes `adrank serve` take it).
        #[arg(long)]
        alias: Option<String>,
    },
    /// Point an alias at a version, or remove it. Fails when the aliases changed since
    /// `--expect` (compare-and-swap).
    Alias {
        name: String,
        alias: String,
        /// A number, another alias or `latest`; leave out with --remove.
        #[arg(value_name = "VERSION")]
        target: Option<String>,
        /// Remove the alias.
        #[arg(long, conflicts_with = "target")]
        remove: bool,
        /// The state sequence number this change is based on (see `registry history`);
        /// default: the current one.
        #[arg(long)]
        expect: Option<u64>,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "adrank registry alias")]
        reason: String,
    },
    /// Every change of a model's aliases and every version published: who, what, when, why.
    History { name: String },
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc_time(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    format!("{}:{:02}:{:02}Z", utc_hour(ms), seconds.rem_euclid(3600) / 60, seconds.rem_euclid(60))
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let config = &loaded.config;
    let registry = Registry::open(&config.registry)?;
    let who = std::env::var("USER").unwrap_or_else(|_| "adrank".into());
    match args.command {
        Command::List { name: None } => {
            let mut table = Table::new(["MODEL", "VERSIONS", "ALIASES"]);
            for name in registry.models().await? {
                let versions = registry.versions(&name).await?;
                let aliases = registry.state(&name).await?.aliases;
                let aliases: Vec<String> = aliases.iter().map(|(a, v)| format!("{a}={v}")).collect();
                table.row(vec![name, versions.len().to_string(), aliases.join(" ")]);
            }
            print!("{}", table.render());
        }
        Command::List { name: Some(name) } => {
            let state = registry.state(&name).await?;
            let mut table = Table::new(["VERSION", "CREATED", "BY", "PARENT", "TRAINED ON", "ALIASES", "REASON"]);
            for m in registry.versions(&name).await? {
                let aliases: Vec<&str> =
                    state.aliases.iter().filter(|(_, v)| **v == m.version).map(|(a, _)| a.as_str()).collect();
                table.row(vec![
                    m.version.to_string(),
                    utc_time(m.created_at_ms),
                    m.created_by.clone(),
                    m.parent.map_or("-".into(), |p| p.to_string()),
                    m.training.as_ref().map_or("(imported)".into(), |t| {
                        format!("{} .. {}, {} examples", utc_hour(t.since_ms), utc_hour(t.until_ms), t.examples)
                    }),
                    aliases.join(" "),
                    m.reason.clone(),
                ]);
            }
            print!("{}", table.render());
        }
        Command::Show { name, reference } => {
            let manifest = registry.version(&name, registry.resolve(&name, &reference).await?).await?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
        }
        Command::Import { name, file, stats, spec, reason, alias } => {
            let spec = FeatureSpec::load(&loaded.spec_path(spec.as_deref()))?;
            let onnx = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // Weights kept beside the file (PyTorch's default) are read now: the registry keeps
            // one blob, and serving loads it far from this folder.
            let folder = file.parent().unwrap_or(std::path::Path::new("."));
            let onnx = adrank_trainer::onnx::external::inline_external_data(&onnx, folder)
                .map_err(|why| anyhow::anyhow!("{} cannot be imported: {why}", file.display()))?;
            let parsed: TransformStats = match &stats {
                Some(path) => {
                    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_slice(&text)
                        .with_context(|| format!("{} is not transform statistics", path.display()))?
                }
                None => TransformStats::default(),
            };
            let transformer = Transformer::new(&spec, &parsed).with_context(|| match &stats {
                Some(path) => format!("the statistics in {} do not fit the spec", path.display()),
                None => "the spec standardises features: pass --stats with their means and standard deviations \
                         (`adrank features export` writes them)"
                    .into(),
            })?;
            let stats = parsed;
            let signature = adrank_trainer::publish::checked_signature(&onnx, &config.onnxruntime, &spec, &transformer)
                .with_context(|| format!("{} cannot be served with this feature spec", file.display()))?;
            let draft = Draft {
                name,
                created_by: who.clone(),
                reason,
                onnx: onnx.into(),
                checkpoint: None,
                spec_version: spec.version(),
                signature,
                transform_stats: stats,
                training: None,
                parent: None,
                metrics: Default::default(),
                tags: Default::default(),
            };
            let manifest = registry.publish(draft).await?;
            println!("imported {} as {} version {}", file.display(), manifest.name, manifest.version);
            if let Some(alias) = alias {
                let expected_seq = registry.state(&manifest.name).await?.seq;
                let set = vec![(alias.clone(), Some(manifest.version))];
                let change = Change { expected_seq, set, by: who, reason: format!("imported: {}", manifest.reason) };
                let state = registry.change(&manifest.name, change).await?;
                println!("state {}: {}", state.seq, state.change);
            }
        }
        Command::Alias { name, alias, target, remove, expect, reason } => {
            let target = match (target, remove) {
                (Some(reference), false) => Some(registry.resolve(&name, &reference).await?),
                (None, true) => None,
                _ => bail!("give a version to point `{alias}` at, or --remove"),
            };
            let expected_seq = match expect {
                Some(seq) => seq,
                None => registry.state(&name).await?.seq,
            };
            let state =
                registry.change(&name, Change { expected_seq, set: vec![(alias, target)], by: who, reason }).await?;
            println!("state {}: {}", state.seq, if state.change.is_empty() { "(no change)" } else { &state.change });
        }
        Command::History { name } => {
            let mut events: Vec<(i64, String, String, String, String)> = Vec::new();
            for m in registry.versions(&name).await? {
                events.push((
                    m.created_at_ms,
                    "-".into(),
                    m.created_by,
                    format!("published version {}", m.version),
                    m.reason,
                ));
            }
            for s in registry.history(&name).await? {
                events.push((s.changed_at_ms, s.seq.to_string(), s.changed_by, s.change, s.reason));
            }
            events.sort_by_key(|e| e.0);
            let mut table = Table::new(["WHEN", "STATE", "WHO", "WHAT", "WHY"]);
            for (when, seq, who, what, why) in events {
                table.row(vec![utc_time(when), seq, who, what, why]);
            }
            print!("{}", table.render());
        }
    }
    Ok(ExitCode::SUCCESS)
}
