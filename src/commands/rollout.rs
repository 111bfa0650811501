//! `adrank rollout`: start, inspect and steer a candidate's rollout, kept in the registry.

use std::{collections::BTreeMap, process::ExitCode};

use adrank_contracts::training_log::TrainingLog;
use adrank_registry::{Action, Decision, Registry, Rollout, rollout::DEFAULT_PLAN};
use adrank_trainer::rollout::{Controller, Look, controller::Judged};
use anyhow::Context as _;
use clap::Subcommand;

use crate::{config::Loaded, table::Table};

/// A model's rollouts.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start rolling a version out against production, at the plan's first step.
    Start {
        name: String,
        /// The version to roll out: a number, an alias (such as `candidate`) or `latest`.
        #[arg(value_name = "VERSION")]
        candidate: String,
        /// The candidate's share of users per step, in percent, rising to 100; 0 is shadow.
        #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_PLAN)]
        plan: Vec<u8>,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "adrank rollout start")]
        reason: String,
    },
    /// The rollout's current state.
    Status {
        name: String,
        /// Print the state document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move to the next step (from the last one, promote).
    Advance(Steer),
    /// Hold the rollout at its step.
    Pause(Steer),
    /// Let a paused rollout go on.
    Resume(Steer),
    /// Make the candidate production now.
    Promote(Steer),
    /// Roll the candidate back: production serves everyone.
    Abort(Steer),
    /// Every rollout document: who, what, when, why.
    History { name: String },
    /// Run the controller: every `rollout.analysis_interval_secs`, judge the running rollout's
    /// arms from the outcomes in the training log, and advance, pause, promote or roll it back.
    Control {
        name: String,
        /// Look once, act if the figures say so, and exit.
        #[arg(long)]
        once: bool,
        /// The training log (default: `ingest.training_log`).
        #[arg(long)]
        training_log: Option<String>,
        /// Serve Prometheus metrics on this address (for example 127.0.0.1:9103).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
}

#[derive(Debug, clap::Args)]
struct Steer {
    name: String,
    /// The document this action is based on (see `rollout status`); default: the current one.
    #[arg(long)]
    expect: Option<u64>,
    /// Why (kept in the audit log).
    #[arg(long, default_value = "adrank rollout")]
    reason: String,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let registry = Registry::open(&loaded.config.registry)?;
    let by = std::env::var("USER").unwrap_or_else(|_| "adrank".into());
    let decision =
        |expected_seq, reason: String| Decision { expected_seq, by: by.clone(), reason, figures: BTreeMap::new() };
    let (steer, action) = match args.command {
        Command::Start { name, candidate, plan, reason } => {
            let candidate = registry.resolve(&name, &candidate).await?;
            let current = registry.rollout(&name).await?.map_or(0, |r| r.seq);
            let rollout = registry.start_rollout(&name, candidate, plan, decision(current, reason)).await?;
            println!("{}", rollout.change);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Status { name, json } => {
            let rollout = registry.rollout(&name).await?;
            match (rollout, json) {
                (Some(r), true) => println!("{}", serde_json::to_string_pretty(&r)?),
                (None, true) => println!("null"),
                (Some(r), false) => {
                    print!("{}", status_table(&r));
                    // The arms as the controller would judge them now, when the log answers.
                    let controller = controller(registry, loaded, name, None)?;
                    match controller.judge(&r).await {
                        Ok(judged) => {
                            print!("{}", arms_table(&judged));
                            let analysis = &judged.analysis;
                            println!("analysis: {}: {}", analysis.verdict.as_str(), analysis.reasons.join("; "));
                        }
                        Err(e) => println!("(the arms' outcomes cannot be read: {e})"),
                    }
                }
                (None, false) => println!("`{name}` has had no rollout"),
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::History { name } => {
            let mut table = Table::new(["DOC", "WHEN", "WHO", "WHAT", "WHY"]);
            for r in registry.rollout_history(&name).await? {
                table.row(vec![
                    r.seq.to_string(),
                    super::registry::utc_time(r.changed_at_ms),
                    r.changed_by,
                    r.change,
                    r.reason,
                ]);
            }
            print!("{}", table.render());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Control { name, once, training_log, metrics_listen } => {
            if let Some(addr) = metrics_listen {
                metrics_exporter_prometheus::PrometheusBuilder::new()
                    .with_http_listener(addr)
                    .install()
                    .with_context(|| format!("cannot serve metrics on {addr}"))?;
                adrank_trainer::rollout::metrics::describe();
            }
            return control(&controller(registry, loaded, name, training_log)?, once).await;
        }
        Command::Advance(steer) => (steer, Action::Advance),
        Command::Pause(steer) => (steer, Action::Pause),
        Command::Resume(steer) => (steer, Action::Resume),
        Command::Promote(steer) => (steer, Action::Promote),
        Command::Abort(steer) => (steer, Action::RollBack),
    };
    let Steer { name, expect, reason } = steer;
    let expected = match expect {
        Some(seq) => seq,
        None => registry.rollout(&name).await?.with_context(|| format!("`{name}` has no rollout"))?.seq,
    };
    let rollout = registry.act_on_rollout(&name, action, decision(expected, reason)).await?;
    println!("{}", rollout.change);
    Ok(ExitCode::SUCCESS)
}

/// The controller of `name`'s rollouts, reading the given training log (default: the ingester's).
pub(super) fn controller(
    registry: Registry,
    loaded: &Loaded,
    name: String,
    training_log: Option<String>,
) -> anyhow::Result<Controller> {
    let log = training_log.unwrap_or_else(|| loaded.config.ingest.training_log.clone());
    Ok(Controller {
        registry,
        log: TrainingLog::open(&log)?,
        model: name,
        config: loaded.config.rollout.clone(),
        by: format!("controller {}", adrank_trainer::retrain::lease::holder_name()),
    })
}

/// The arms so far, one row each: outcomes from the training log, requests from the replicas
/// (the candidate's at its step, production's over the rollout).
fn arms_table(judged: &Judged) -> String {
    let mut table =
        Table::new(["ARM", "IMPRESSIONS", "CLICKED", "CTR", "PREDICTED/OBSERVED", "REQUESTS", "5XX", "P99"]);
    let (production, candidate) = &judged.outcomes;
    let requests = judged.requests.as_ref();
    let arms = [("production", production, requests.map(|r| &r.0)), ("candidate", candidate, requests.map(|r| &r.1))];
    for (name, arm, requests) in arms {
        let ratio = |x: f64, y: u64| if y == 0 { "-".to_string() } else { format!("{:.4}", x / y as f64) };
        let p99 = requests.and_then(|r| r.quantile(0.99)).map_or("-".into(), |s| format!("{:.1} ms", 1000.0 * s));
        table.row(vec![
            name.into(),
            arm.impressions.to_string(),
            arm.clicked.to_string(),
            ratio(arm.clicked as f64, arm.impressions),
            ratio(arm.predicted(), arm.clicked),
            requests.map_or("-".into(), |r| r.requests.to_string()),
            requests.map_or("-".into(), |r| r.errors.to_string()),
            p99,
        ]);
    }
    table.render()
}

fn status_table(r: &Rollout) -> String {
    let mut table = Table::new(["", ""]);
    let plan: Vec<String> =
        r.plan.iter().enumerate().map(|(i, w)| if i == r.step { format!("[{w}%]") } else { format!("{w}%") }).collect();
    table.row(vec!["rollout".into(), format!("{} (document {})", r.id, r.seq)]);
    table.row(vec!["status".into(), r.status.as_str().into()]);
    table.row(vec!["production".into(), format!("version {}", r.production)]);
    table.row(vec!["candidate".into(), format!("version {}", r.candidate)]);
    let weight = if r.is_shadow() { "0% (shadow)".to_string() } else { format!("{}%", r.weight()) };
    table.row(vec!["candidate's users".into(), weight]);
    table.row(vec!["plan".into(), plan.join(" -> ")]);
    table.row(vec!["step since".into(), super::registry::utc_time(r.step_started_ms)]);
    table.row(vec![
        "last change".into(),
        format!("{} by {}: {}", super::registry::utc_time(r.changed_at_ms), r.changed_by, r.change),
    ]);
    table.row(vec!["why".into(), r.reason.clone()]);
    table.render()
}

/// Looks at the rollout every interval (once with `once`) until interrupted, one line per look.
async fn control(controller: &Controller, once: bool) -> anyhow::Result<ExitCode> {
    let interval = std::time::Duration::from_secs(controller.config.analysis_interval_secs);
    // An idle controller says so once, not every interval.
    let mut idle_said: Option<String> = None;
    loop {
        match controller.look(adrank_contracts::events::now_ms()).await {
            Ok(look) => {
                let idle = match &look {
                    Look::Idle(r) => Some(r.as_ref().map_or("none".to_string(), |r| format!("{} {}", r.id, r.seq))),
                    _ => None,
                };
                if idle.is_none() || idle != idle_said {
                    println!("{}", describe(&look));
                }
                idle_said = idle;
            }
            // A registry or log that does not answer is looked at again next time.
            Err(e) if !once => tracing::warn!(error = %e, "the look failed; trying again next interval"),
            Err(e) => return Err(e.into()),
        }
        if once {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = super::ingest::shutdown_signal() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// One line for a look.
fn describe(look: &Look) -> String {
    let when = super::registry::utc_time(adrank_contracts::events::now_ms());
    match look {
        Look::Idle(None) => format!("{when}  no rollout"),
        Look::Idle(Some(r)) => format!("{when}  rollout {} is {}: nothing to do", r.id, r.status.as_str()),
        Look::Waiting { rollout, reason, .. } => {
            format!("{when}  rollout {} at {}%: waiting: {reason}", rollout.id, rollout.weight())
        }
        Look::Acted { rollout, .. } => format!("{when}  {}: {}", rollout.change, rollout.reason),
        Look::Raced { rollout } => {
            format!("{when}  rollout {} changed while deciding; looking again next time", rollout.id)
        }
    }
}
