//! One retraining cycle: window -> train -> evaluate -> gate -> publish -> done, each step
//! recorded when its side effect is complete, so that a cycle killed anywhere resumes after its
//! last recorded step and publishes its candidate once.
//!
//! Idempotence, step by step: the window is chosen once and recorded; a candidate version is
//! tagged with its cycle, so a resumed train step that finds it does not train again; evaluating
//! and judging are pure; the audit entry names its cycle, so a resumed publish step that finds
//! it does not change the aliases twice.

use std::collections::BTreeMap;

use adrank_contracts::{events::now_ms, spec::FeatureSpec, training_log::utc_hour};
use adrank_registry::{Change, Manifest, OrtConfig, PRODUCTION, Registry};

use super::{
    RetrainConfig,
    gates::{Decision, judge},
    lease::LeaseGuard,
    records::{self, Cycle, Outcome, Step, StepRecord},
    windows::{final_hours, plan},
};
use crate::{
    Error, Result, TrainingConfig,
    data::LogWindow,
    evaluate::{EvalRequest, evaluate},
    parallel::Parallel,
    publish::{PublishRequest, publish, warm_start},
    train::{TrainRequest, train},
};

/// The alias a blessed candidate gets (the rollout takes it from there).
pub const CANDIDATE: &str = "candidate";

/// The manifest tag naming the cycle that trained a version.
pub const CYCLE_TAG: &str = "retrain_cycle";

/// Everything a cycle needs.
#[derive(Debug)]
pub struct CycleRequest<'a> {
    pub registry: &'a Registry,
    /// The training log's location.
    pub log: &'a str,
    pub spec: &'a FeatureSpec,
    pub training: &'a TrainingConfig,
    pub ort: &'a OrtConfig,
    pub retrain: &'a RetrainConfig,
    /// Point `production` (not `candidate`) at a blessed version: for setups without rollouts.
    pub promote: bool,
    pub lease: &'a LeaseGuard,
    /// Who runs it (the lease holder), for the records and the audit log.
    pub by: &'a str,
    /// How to start `adrank train --distributed` when `retrain.ranks` > 1.
    pub launch: &'a Launch,
}

/// What a launched training needs: the adrank executable, its config file and the spec, so that
/// every rank reads what the loop reads.
#[derive(Debug, Clone)]
pub struct Launch {
    pub exe: std::path::PathBuf,
    pub config: Option<std::path::PathBuf>,
    pub spec: std::path::PathBuf,
}

impl Launch {
    /// `<launcher words> -np <ranks> <exe> [--config <file>]`, for the caller to add the command.
    pub fn command(&self, launcher: &str, ranks: usize) -> Result<tokio::process::Command> {
        let mut words = launcher.split_whitespace();
        let program = words.next().ok_or_else(|| Error::Settings("the MPI launcher command is empty".into()))?;
        let mut command = tokio::process::Command::new(program);
        command.args(words).args(["-np", &ranks.to_string()]).arg(&self.exe);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        Ok(command)
    }
}

/// What one call of [`run_cycle`] did.
#[derive(Debug)]
pub enum CycleOutcome {
    /// The log has too few final hours for a cycle; nothing was recorded.
    NotEnoughData(String),
    /// A cycle ran (or resumed) to its end.
    Finished(Cycle),
}

/// Runs the unfinished cycle to its end, or starts a new one when the newest is finished.
pub async fn run_cycle(request: &CycleRequest<'_>) -> Result<CycleOutcome> {
    let name = &request.retrain.model;
    let mut cycle = match records::newest(request.registry, name).await? {
        Some(cycle) if !cycle.is_done() => {
            let last = cycle.steps.keys().next_back().map_or("none", |s| s.name());
            tracing::info!(cycle = cycle.id, last_step = last, "resuming an unfinished retraining cycle");
            cycle
        }
        newest => Cycle { id: newest.map_or(1, |c| c.id + 1), steps: BTreeMap::new() },
    };
    for step in Step::ALL {
        if cycle.steps.contains_key(&step) {
            continue;
        }
        request.lease.check().await?;
        let started_at_ms = now_ms();
        let outcome = match step {
            Step::Window => match window(request).await? {
                Ok(outcome) => outcome,
                Err(reason) => return Ok(CycleOutcome::NotEnoughData(reason)),
            },
            Step::Train => train_step(request, &cycle).await?,
            Step::Evaluate => evaluate_step(request, &cycle).await?,
            Step::Gate => {
                let report = cycle.report().expect("the evaluate step precedes the gate step; this is a bug");
                let verdict = judge(report, &request.retrain.gates);
                tracing::info!(
                    cycle = cycle.id,
                    decision = %verdict.decision,
                    reasons = %verdict.reasons.join("; "),
                    "retraining gates applied"
                );
                let version = cycle.version().expect("the train step precedes the gate step; this is a bug");
                let json = serde_json::to_vec_pretty(&verdict).expect("verdicts serialise; this is a bug");
                request.registry.put_report(name, version, "retrain-decision", json).await?;
                Outcome::Gate { verdict }
            }
            Step::Publish => publish_step(request, &cycle).await?,
            Step::Done => {
                Outcome::Done { decision: cycle.verdict().map(|v| v.decision), version: cycle.version(), error: None }
            }
        };
        stall_point(step).await;
        let record = StepRecord {
            cycle: cycle.id,
            step,
            by: request.by.into(),
            started_at_ms,
            finished_at_ms: now_ms(),
            outcome,
        };
        tracing::info!(cycle = cycle.id, step = step.name(), seconds = record.seconds(), "retraining step done");
        crate::metrics::step_done(step.name(), record.seconds());
        if !records::put(request.registry, name, &record).await? {
            return Err(Error::LeaseLost(format!(
                "step {} of cycle {} was recorded by another process",
                step.name(),
                cycle.id
            )));
        }
        cycle.steps.insert(step, record);
    }
    crate::metrics::cycle_done(&cycle.status());
    Ok(CycleOutcome::Finished(cycle))
}

/// Ends an unfinished cycle as failed (after its attempts ran out), so the next trigger starts
/// a new one.
pub async fn fail_cycle(
    registry: &Registry,
    (name, by): (&str, &str),
    lease: &LeaseGuard,
    error: &str,
) -> Result<Option<u64>> {
    lease.check().await?;
    let Some(cycle) = records::newest(registry, name).await?.filter(|c| !c.is_done()) else { return Ok(None) };
    let now = now_ms();
    let record = StepRecord {
        cycle: cycle.id,
        step: Step::Done,
        by: by.into(),
        started_at_ms: now,
        finished_at_ms: now,
        outcome: Outcome::Done { decision: None, version: cycle.version(), error: Some(error.into()) },
    };
    records::put(registry, name, &record).await?;
    crate::metrics::cycle_done("failed");
    Ok(Some(cycle.id))
}

/// The windows, or the sentence saying why there is not enough final data yet.
async fn window(request: &CycleRequest<'_>) -> Result<Result<Outcome, String>> {
    let Some(hours) = final_hours(request.log).await? else {
        return Ok(Err(format!("the training log at {} has no final hours yet", request.log)));
    };
    let plan = match plan(hours, request.retrain.train_hours, request.retrain.eval_hours) {
        Ok(plan) => plan,
        Err(reason) => return Ok(Err(reason)),
    };
    let production = request.registry.state(&request.retrain.model).await?.aliases.get(PRODUCTION).copied();
    tracing::info!(
        train = %format!("{} .. {}", utc_hour(plan.train.0), utc_hour(plan.train.1)),
        eval = %format!("{} .. {}", utc_hour(plan.eval.0), utc_hour(plan.eval.1)),
        production,
        "retraining windows chosen"
    );
    Ok(Ok(Outcome::Window { plan, production }))
}

async fn train_step(request: &CycleRequest<'_>, cycle: &Cycle) -> Result<Outcome> {
    let name = &request.retrain.model;
    let (plan, production) = cycle.plan().expect("the window step precedes the train step; this is a bug");
    // Killed after publishing but before recording: the version is there, tagged.
    let id = cycle.id.to_string();
    let published = request.registry.versions(name).await?.into_iter().find(|m| m.tags.get(CYCLE_TAG) == Some(&id));
    if let Some(manifest) = published {
        tracing::info!(cycle = cycle.id, version = manifest.version, "the cycle's candidate was already published");
        return Ok(train_outcome(&manifest, None));
    }
    let (warm, cold_start) = match production {
        None => (None, Some("no production version yet".to_string())),
        Some(version) => {
            let manifest = request.registry.version(name, version).await?;
            let same_architecture = manifest.training.as_ref().is_some_and(|t| {
                t.architecture == serde_json::to_value(&request.training.model).expect("architectures serialise")
            });
            if manifest.spec_version != request.spec.version() {
                (None, Some(format!("production (v{version}) reads another feature spec")))
            } else if !same_architecture {
                (None, Some(format!("production (v{version}) has another architecture than [training.model]")))
            } else if manifest.checkpoint.is_none() {
                (None, Some(format!("production (v{version}) has no trainer checkpoint (imported)")))
            } else {
                (Some(warm_start(request.registry, &manifest).await?), None)
            }
        }
    };
    let parent = if warm.is_some() { production } else { None };
    if request.retrain.ranks > 1 {
        launch(request, cycle.id, plan, parent).await?;
        let published = request.registry.versions(name).await?.into_iter().find(|m| m.tags.get(CYCLE_TAG) == Some(&id));
        return match published {
            Some(manifest) => Ok(train_outcome(&manifest, cold_start)),
            None => Err(Error::Settings(format!(
                "the launched training of cycle {} ended without publishing a version tagged {CYCLE_TAG}={id}",
                cycle.id
            ))),
        };
    }
    let data = LogWindow::open(request.log, plan.train_window()).await?;
    let trained = {
        let (spec, config) = (request.spec.clone(), request.training.clone());
        tokio::task::spawn_blocking(move || {
            train(TrainRequest {
                data: &data,
                spec: &spec,
                config: &config,
                warm_start: warm,
                progress: false,
                parallel: Parallel::local(),
            })
        })
        .await
        .map_err(|e| Error::Reader(format!("the training thread failed: {e}")))??
    };
    // Training can outlast a lease that failed to renew: publish only while still holding it.
    request.lease.check().await?;
    let manifest = publish(
        request.registry,
        &trained,
        PublishRequest {
            name,
            spec: request.spec,
            ort: request.ort,
            created_by: request.by.into(),
            reason: format!("retrain cycle {}", cycle.id),
            parent,
            tags: BTreeMap::from([(CYCLE_TAG.to_string(), id)]),
        },
    )
    .await?;
    tracing::info!(cycle = cycle.id, version = manifest.version, parent, "candidate published (no alias yet)");
    Ok(train_outcome(&manifest, cold_start))
}

/// Trains on `retrain.ranks` ranks through `[training] mpi_launcher`: `<launcher> -np <ranks>
/// adrank train --distributed …`, tagged with the cycle and fenced by this loop's lease.
async fn launch(request: &CycleRequest<'_>, cycle: u64, plan: super::windows::Plan, parent: Option<u64>) -> Result<()> {
    let program = request.training.mpi_launcher.split_whitespace().next().unwrap_or_default().to_string();
    let mut command = request.launch.command(&request.training.mpi_launcher, request.retrain.ranks as usize)?;
    command
        // One gradient thread per rank: the model then depends on the shards alone.
        .args(["train", "--distributed", "--threads", "1", "--name", &request.retrain.model])
        .args(["--training-log", request.log])
        .args(["--since", &utc_hour(plan.train.0), "--until", &utc_hour(plan.train.1)])
        .arg("--spec")
        .arg(&request.launch.spec)
        .args(["--reason", &format!("retrain cycle {cycle}"), "--tag", &format!("{CYCLE_TAG}={cycle}")])
        .args(["--lease-holder", request.by])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(parent) = parent {
        command.args(["--parent", &parent.to_string()]);
    }
    tracing::info!(cycle, ranks = request.retrain.ranks, launcher = %request.training.mpi_launcher, "launching distributed training");
    let status = command
        .status()
        .await
        .map_err(|e| Error::Io { action: format!("starting the training launcher `{program}`"), source: e })?;
    if !status.success() {
        return Err(Error::Settings(format!(
            "the distributed training of cycle {cycle} failed ({status}); the cycle retries the train step"
        )));
    }
    Ok(())
}

fn train_outcome(manifest: &Manifest, cold_start: Option<String>) -> Outcome {
    let training = manifest.training.as_ref();
    Outcome::Train {
        version: manifest.version,
        parent: manifest.parent,
        cold_start,
        examples: training.map_or(0, |t| t.examples),
        clicks: training.map_or(0, |t| t.clicks),
        validation_log_loss: manifest.metrics.get("validation_log_loss").copied().unwrap_or(f64::NAN),
        epochs: training.and_then(|t| t.report.get("epochs")?.as_array().map(|e| e.len() as u32)).unwrap_or_default(),
    }
}

async fn evaluate_step(request: &CycleRequest<'_>, cycle: &Cycle) -> Result<Outcome> {
    let name = &request.retrain.model;
    let (plan, production) = cycle.plan().expect("the window step precedes the evaluate step; this is a bug");
    let version = cycle.version().expect("the train step precedes the evaluate step; this is a bug");
    let candidate = request.registry.version(name, version).await?;
    let baseline = match production {
        Some(p) if p != version => Some(request.registry.version(name, p).await?),
        _ => None,
    };
    let data = LogWindow::open(request.log, plan.eval_window()).await?;
    let report = evaluate(
        request.registry,
        EvalRequest {
            data: &data,
            spec: request.spec,
            ort: request.ort,
            candidate: &candidate,
            baseline: baseline.as_ref(),
        },
    )
    .await?;
    let json = serde_json::to_vec_pretty(&report).expect("reports serialise; this is a bug");
    request.registry.put_report(name, version, "retrain-eval", json).await?;
    tracing::info!(cycle = cycle.id, version, figures = %headline(&report), "candidate evaluated against production");
    Ok(Outcome::Evaluate { report })
}

/// The audit entry, with the alias change when blessed. Production must not have moved since the
/// window step: the verdict compared against it.
async fn publish_step(request: &CycleRequest<'_>, cycle: &Cycle) -> Result<Outcome> {
    let name = &request.retrain.model;
    let (_, production) = cycle.plan().expect("the window step precedes the publish step; this is a bug");
    let version = cycle.version().expect("the train step precedes the publish step; this is a bug");
    let verdict = cycle.verdict().expect("the gate step precedes the publish step; this is a bug");
    let prefix = format!("retrain cycle {}:", cycle.id);
    if let Some(done) = request.registry.history(name).await?.into_iter().rev().find(|s| s.reason.starts_with(&prefix))
    {
        start_rollout(request, cycle, version, verdict.decision).await?;
        return Ok(Outcome::Publish { aliases: aliases_of(verdict.decision, request.promote), state_seq: done.seq });
    }
    let aliases = aliases_of(verdict.decision, request.promote);
    for _ in 0..5 {
        let state = request.registry.state(name).await?;
        let now = state.aliases.get(PRODUCTION).copied();
        if now != production {
            return Err(Error::Settings(format!(
                "production moved from {} to {} while cycle {} ran; the candidate was judged against the old one",
                production.map_or("none".into(), |v| format!("v{v}")),
                now.map_or("none".into(), |v| format!("v{v}")),
                cycle.id
            )));
        }
        request.lease.check().await?;
        let summary = if verdict.reasons.is_empty() {
            cycle.report().map(headline).unwrap_or_default()
        } else {
            verdict.reasons.join("; ")
        };
        let change = Change {
            expected_seq: state.seq,
            set: aliases.iter().map(|a| (a.clone(), Some(version))).collect(),
            by: request.by.into(),
            reason: format!("{prefix} version {version} {}: {summary}", verdict.decision),
        };
        match request.registry.change(name, change).await {
            Ok(state) => {
                start_rollout(request, cycle, version, verdict.decision).await?;
                return Ok(Outcome::Publish { aliases, state_seq: state.seq });
            }
            Err(adrank_registry::Error::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Settings(format!("the aliases of `{name}` kept changing; cycle {} will retry", cycle.id)))
}

/// Starts a rollout of a blessed candidate when `[retrain] rollout` asks for one (and not
/// `--promote`). Idempotent, for a resumed publish step: nothing happens when the newest rollout
/// already is this version's. One under way for another version is left alone (logged).
async fn start_rollout(request: &CycleRequest<'_>, cycle: &Cycle, version: u64, decision: Decision) -> Result<()> {
    if decision != Decision::Blessed || request.promote || !request.retrain.rollout {
        return Ok(());
    }
    let name = &request.retrain.model;
    let newest = request.registry.rollout(name).await?;
    if let Some(newest) = &newest {
        if newest.candidate == version {
            return Ok(());
        }
        if newest.is_active() {
            tracing::warn!(
                cycle = cycle.id,
                version,
                rollout = newest.id,
                candidate = newest.candidate,
                "a rollout is under way; the blessed candidate waits for the next cycle"
            );
            return Ok(());
        }
    }
    request.lease.check().await?;
    let decision = adrank_registry::Decision {
        expected_seq: newest.map_or(0, |r| r.seq),
        by: request.by.into(),
        reason: format!("retrain cycle {}: version {version} blessed", cycle.id),
        figures: Default::default(),
    };
    let plan = request.retrain.rollout_plan.clone();
    let rollout = request.registry.start_rollout(name, version, plan, decision).await?;
    tracing::info!(cycle = cycle.id, version, rollout = rollout.id, "started a rollout of the blessed candidate");
    Ok(())
}

fn aliases_of(decision: Decision, promote: bool) -> Vec<String> {
    match decision {
        Decision::Blessed if promote => vec![PRODUCTION.to_string()],
        Decision::Blessed => vec![CANDIDATE.to_string()],
        Decision::Refused | Decision::Inconclusive => vec![],
    }
}

/// The candidate's headline figures (and production's), for the audit log.
fn headline(report: &crate::evaluate::EvalReport) -> String {
    let row = |role: &str| report.rows.iter().find(|r| r.role == role);
    let mut text = match row("candidate") {
        Some(c) => format!("AUC {:.4}, NE {:.4}", c.overall.auc, c.overall.normalised_entropy),
        None => String::new(),
    };
    if let (Some(c), Some(p)) = (row("candidate"), row("baseline")) {
        text.push_str(&format!(
            " vs production AUC {:.4}, NE {:.4} ({:+.2}% NE)",
            p.overall.auc,
            p.overall.normalised_entropy,
            100.0 * (c.overall.normalised_entropy / p.overall.normalised_entropy - 1.0)
        ));
    }
    text.push_str(&format!(" on {} examples, {} clicks", report.examples, report.clicks));
    text
}

/// A test hook: `ADRANK_RETRAIN_STALL=<step>` stops the process inside that step, after its side
/// effect and before its record, so that a test can kill it there and prove the resume.
async fn stall_point(step: Step) {
    if std::env::var("ADRANK_RETRAIN_STALL").is_ok_and(|s| s == step.name()) {
        eprintln!("adrank retrain: stalled inside step {} (ADRANK_RETRAIN_STALL)", step.name());
        std::future::pending::<()>().await;
    }
}
