//! `adrank retrain`: one retraining cycle, the loop that runs them, and their history.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use adrank_contracts::{spec::FeatureSpec, training_log::utc_hour};
use adrank_registry::Registry;
use adrank_trainer::retrain::{Cycle, CycleOutcome, Launch, Outcome, Retrainer, Step, cycles, lease::holder_name};
use anyhow::Context as _;
use clap::Subcommand;

use crate::{config::Loaded, table::Table};

/// Retrain: one cycle, a loop of them, or their history.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Keep running: start a cycle whenever `[retrain]`'s triggers say so; wait while another
    /// loop holds the lease, take over when it dies.
    #[arg(long = "loop")]
    run_loop: bool,
    /// With --loop: stop after this many cycles have ended.
    #[arg(long, value_name = "N", requires = "run_loop")]
    max_cycles: Option<u32>,
    /// Point `production` (not `candidate`) at a blessed version: for setups without rollouts.
    #[arg(long)]
    promote: bool,
    /// The training log (default: `ingest.training_log`).
    #[arg(long, value_name = "LOCATION")]
    training_log: Option<String>,
    /// The feature spec.
    /// Default: `features.toml` beside the config file, else `config/features.toml`.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (for example 127.0.0.1:9102).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// The cycles so far, newest last: steps, durations, figures, decision.
    History {
        /// Only the newest N cycles.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Every record as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let config = &loaded.config;
    let registry = Registry::open(&config.registry)?;
    if let Some(Sub::History { limit, json }) = args.command {
        return history(&registry, &config.retrain.model, limit, json).await;
    }
    if let Some(addr) = args.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        adrank_trainer::metrics::describe();
    }
    let retrainer = Retrainer {
        registry,
        log: args.training_log.clone().unwrap_or_else(|| config.ingest.training_log.clone()),
        spec: FeatureSpec::load(&loaded.spec_path(args.spec.as_deref()))?,
        training: config.training.clone(),
        ort: config.onnxruntime.clone(),
        retrain: config.retrain.clone(),
        promote: args.promote,
        holder: holder_name(),
        launch: Launch {
            exe: std::env::current_exe().context("cannot find the adrank executable to launch training with")?,
            config: loaded.file.as_deref().map(std::path::absolute).transpose()?,
            spec: std::path::absolute(loaded.spec_path(args.spec.as_deref()))?,
        },
    };
    let name = &config.retrain.model;
    if args.run_loop {
        eprintln!("retraining `{name}` from {} as {}", retrainer.log, retrainer.holder);
        let mut told = String::new();
        let mut waiting = |record: &adrank_registry::LeaseRecord| {
            if record.holder != told {
                eprintln!("waiting: the retraining lease is held by {}", record.holder);
                told = record.holder.clone();
            }
        };
        let summary = retrainer.run_loop(args.max_cycles, &mut waiting, super::ingest::shutdown_signal()).await?;
        eprintln!("{} cycles ended, {} failed attempts", summary.cycles, summary.failed_attempts);
        return Ok(ExitCode::SUCCESS);
    }
    match retrainer.once().await? {
        CycleOutcome::NotEnoughData(reason) => {
            println!("nothing to do: {reason}");
            Ok(ExitCode::SUCCESS)
        }
        CycleOutcome::Finished(cycle) => {
            print!("{}", steps(&cycle));
            println!("{}", conclusion(&cycle));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One cycle's steps as a table.
fn steps(cycle: &Cycle) -> String {
    let mut table = Table::new(["CYCLE", "STEP", "SECONDS", "RESULT"]);
    for record in cycle.steps.values() {
        table.row(vec![
            cycle.id.to_string(),
            record.step.name().into(),
            format!("{:.1}", record.seconds()),
            describe(&record.outcome),
        ]);
    }
    table.render()
}

fn window_text((since, until): (i64, i64)) -> String {
    format!("{} .. {}", utc_hour(since), utc_hour(until))
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Window { plan, production } => format!(
            "train {}, evaluate {} UTC, against {}",
            window_text(plan.train),
            window_text(plan.eval),
            production.map_or("no production (value gates only)".into(), |v| format!("production v{v}"))
        ),
        Outcome::Train { version, parent, cold_start, examples, clicks, validation_log_loss, epochs } => format!(
            "v{version} from {}: {examples} examples, {clicks} clicks, {epochs} epochs, validation log loss {validation_log_loss:.5}",
            match (parent, cold_start) {
                (Some(p), _) => format!("v{p}"),
                (None, Some(why)) => format!("scratch ({why})"),
                (None, None) => "scratch".into(),
            }
        ),
        Outcome::Evaluate { report } => {
            let figure = |role: &str| {
                report.rows.iter().find(|r| r.role == role).map(|r| {
                    format!(
                        "{role} AUC {:.4} NE {:.4} calibration {:.3}",
                        r.overall.auc, r.overall.normalised_entropy, r.overall.calibration
                    )
                })
            };
            let mut parts = vec![format!("{} examples, {} clicks", report.examples, report.clicks)];
            parts.extend(["candidate", "baseline", "oracle"].into_iter().filter_map(figure));
            parts.join("; ")
        }
        Outcome::Gate { verdict } => {
            let passed = verdict.checks.iter().filter(|c| c.passed).count();
            let mut text = format!("{}: {passed} of {} checks passed", verdict.decision, verdict.checks.len());
            if !verdict.reasons.is_empty() {
                text.push_str(&format!(" ({})", verdict.reasons.join("; ")));
            }
            text
        }
        Outcome::Publish { aliases, state_seq } if aliases.is_empty() => {
            format!("no alias moved; audit entry {state_seq}")
        }
        Outcome::Publish { aliases, state_seq } => {
            format!("{} now points at the candidate; audit entry {state_seq}", aliases.join(", "))
        }
        Outcome::Done { decision, version, error } => match (decision, error) {
            (_, Some(error)) => format!("failed: {error}"),
            (Some(d), None) => format!("{d}{}", version.map(|v| format!(" (v{v})")).unwrap_or_default()),
            (None, None) => "done".into(),
        },
    }
}

/// The one line a person reads at the end.
fn conclusion(cycle: &Cycle) -> String {
    let version = cycle.version().map_or("no version".into(), |v| format!("version {v}"));
    let aliases = match cycle.steps.get(&Step::Publish).map(|r| &r.outcome) {
        Some(Outcome::Publish { aliases, .. }) if !aliases.is_empty() => {
            format!("; {} now points at it", aliases.join(", "))
        }
        _ => String::new(),
    };
    format!("cycle {}: {version} {}{aliases}", cycle.id, cycle.status())
}

async fn history(registry: &Registry, name: &str, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let all = cycles(registry, name).await?;
    let shown = &all[all.len().saturating_sub(limit)..];
    if json {
        let records: Vec<_> = shown.iter().flat_map(|c| c.steps.values()).collect();
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    if shown.is_empty() {
        println!("no retraining cycles of `{name}` yet; run `adrank retrain`");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new([
        "CYCLE",
        "STARTED (UTC)",
        "STEPS",
        "SECONDS",
        "TRAIN WINDOW",
        "VERSION",
        "AUC",
        "NE",
        "VS PRODUCTION",
        "DECISION",
    ]);
    for cycle in shown {
        let summary = CycleSummary::of(cycle);
        table.row(vec![
            cycle.id.to_string(),
            summary.started_at_ms.map_or("-".into(), utc_minute),
            format!("{}/{} ({})", summary.steps_done, Step::ALL.len(), summary.last_step.unwrap_or("-")),
            format!("{:.1}", summary.seconds),
            cycle.plan().map_or("-".into(), |(plan, _)| window_text(plan.train)),
            summary.version.map_or("-".into(), |v| format!("v{v}")),
            summary.auc.map_or("-".into(), |auc| format!("{auc:.4}")),
            summary.normalised_entropy.map_or("-".into(), |ne| format!("{ne:.4}")),
            summary.vs_production(),
            summary.decision,
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

/// A cycle at a glance, for `retrain history` and `adrank status`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct CycleSummary {
    pub(crate) id: u64,
    pub(crate) started_at_ms: Option<i64>,
    pub(crate) steps_done: usize,
    pub(crate) last_step: Option<&'static str>,
    pub(crate) seconds: f64,
    pub(crate) version: Option<u64>,
    pub(crate) auc: Option<f64>,
    pub(crate) normalised_entropy: Option<f64>,
    /// Production's version and the candidate's normalised entropy against it, in percent
    /// (negative: the candidate predicts better).
    pub(crate) production: Option<u64>,
    pub(crate) ne_change_percent: Option<f64>,
    pub(crate) decision: String,
}

impl CycleSummary {
    pub(crate) fn of(cycle: &Cycle) -> Self {
        let row = |role: &str| cycle.report().and_then(|r| r.rows.iter().find(|r| r.role == role));
        let (candidate, production) = (row("candidate"), row("baseline"));
        Self {
            id: cycle.id,
            started_at_ms: cycle.started_at_ms(),
            steps_done: cycle.steps.len(),
            last_step: cycle.steps.keys().last().map(|s| s.name()),
            seconds: cycle.steps.values().map(|r| r.seconds()).sum(),
            version: cycle.version(),
            auc: candidate.map(|c| c.overall.auc),
            normalised_entropy: candidate.map(|c| c.overall.normalised_entropy),
            production: production.and_then(|p| p.version),
            ne_change_percent: candidate
                .zip(production)
                .map(|(c, p)| 100.0 * (c.overall.normalised_entropy / p.overall.normalised_entropy - 1.0)),
            decision: cycle.status(),
        }
    }

    /// `-1.20% NE vs v3`, `first model` or `-`.
    pub(crate) fn vs_production(&self) -> String {
        match (self.ne_change_percent, self.normalised_entropy) {
            (Some(change), _) => format!("{change:+.2}% NE vs v{}", self.production.unwrap_or_default()),
            (None, Some(_)) => "first model".into(),
            _ => "-".into(),
        }
    }
}

/// `YYYY-MM-DDTHH:MM` of a UTC time in milliseconds.
pub(crate) fn utc_minute(ms: i64) -> String {
    format!("{}:{:02}", utc_hour(ms), ms.div_euclid(60_000).rem_euclid(60))
}
