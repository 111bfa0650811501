//! `adrank status`: the whole loop on one screen: dependencies, models and aliases, the
//! rollout and its arms, the serving replicas, the ingester's lag and freshness, and the last
//! retraining cycles. Every part is read with a deadline, and a part that cannot be read says
//! why instead of hiding the rest.

use std::{collections::BTreeMap, future::Future, process::ExitCode, time::Duration};

use adrank_contracts::{arm_requests::ArmRequests, events::now_ms, exposition, training_log::Outcomes};
use adrank_featurestore::ingest::standing::{TopicStanding, standing};
use adrank_registry::{Arm, Registry, Rollout, rollout::Status as RolloutStatus};
use adrank_trainer::{
    retrain::cycles,
    rollout::replicas::{Endpoint, Scrape},
};
use serde::Serialize;

use super::{
    doctor::{self, Outcome},
    registry::utc_time,
    retrain::CycleSummary,
};
use crate::{
    config::Loaded,
    table::{Paint, Table},
};

/// The loop's state on one screen.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The model whose rollout and retraining are shown (default: `retrain.model`).
    #[arg(long)]
    model: Option<String>,
    /// One JSON document instead of the tables (with --watch, one per line).
    #[arg(long)]
    json: bool,
    /// Refresh every SECS seconds (default 2) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<u64>,
    /// How many of the newest retraining cycles to show.
    #[arg(long, default_value_t = 5)]
    cycles: usize,
}

/// How long any one part may take to read.
const PART_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `adrank status` shows, as `--json` prints it.
#[derive(Debug, Serialize)]
pub(super) struct Status {
    pub(super) taken_at_ms: i64,
    pub(super) model: String,
    pub(super) dependencies: Vec<Dependency>,
    pub(super) models: Part<Vec<Model>>,
    pub(super) rollout: Part<Option<RolloutView>>,
    pub(super) replicas: Vec<Replica>,
    pub(super) ingest: Part<Vec<TopicStanding>>,
    pub(super) retraining: Part<Vec<CycleSummary>>,
}

/// A part of the status, or why it could not be read.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Part<T> {
    Read(T),
    Unreadable(String),
}

async fn part<T, E: std::fmt::Display>(read: impl Future<Output = Result<T, E>>) -> Part<T> {
    match tokio::time::timeout(PART_TIMEOUT, read).await {
        Ok(Ok(value)) => Part::Read(value),
        Ok(Err(e)) => Part::Unreadable(e.to_string()),
        Err(_) => Part::Unreadable(format!("no answer within {PART_TIMEOUT:?}")),
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Dependency {
    pub(super) name: &'static str,
    pub(super) ok: bool,
    pub(super) detail: String,
}

#[derive(Debug, Serialize)]
pub(super) struct Model {
    name: String,
    versions: usize,
    newest: Option<u64>,
    aliases: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub(super) struct RolloutView {
    #[serde(flatten)]
    pub(super) rollout: Rollout,
    step_age_secs: f64,
    /// Each arm's figures, while the rollout is under way.
    pub(super) arms: Vec<ArmView>,
    /// The controller's verdict on the figures now, or why the outcomes cannot be read.
    verdict: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct ArmView {
    pub(super) arm: &'static str,
    pub(super) version: u64,
    /// Requests at the current step, summed over the replicas, and their rate over the step.
    requests: u64,
    pub(super) requests_per_sec: f64,
    errors: u64,
    pub(super) p99_ms: Option<f64>,
    /// Over the rollout, from the training log: impressions with closed attribution windows.
    pub(super) impressions: u64,
    pub(super) ctr: Option<f64>,
    /// Predicted over observed clicks.
    pub(super) calibration: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(super) struct Replica {
    pub(super) metrics: String,
    /// What `/readyz` says: the default version, features online or not.
    pub(super) ready: Part<serde_json::Value>,
    pub(super) rank_requests: Option<f64>,
    pub(super) rank_errors: Option<f64>,
    pub(super) shed: Option<f64>,
    /// Over the server's recent window (its summaries rotate).
    pub(super) rank_p50_ms: Option<f64>,
    pub(super) rank_p99_ms: Option<f64>,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let model = args.model.clone().unwrap_or_else(|| loaded.config.retrain.model.clone());
    let paint = Paint::for_stdout();
    let Some(every) = args.watch else {
        print(&args, &read(loaded, &model, args.cycles).await, paint)?;
        return Ok(ExitCode::SUCCESS);
    };
    let every = Duration::from_secs(every.max(1));
    loop {
        let status = read(loaded, &model, args.cycles).await;
        if !args.json && paint.is_on() {
            // Home and clear: the screen redraws in place.
            print!("\x1b[H\x1b[2J");
        }
        print(&args, &status, paint)?;
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn print(args: &Args, status: &Status, paint: Paint) -> anyhow::Result<()> {
    if args.json && args.watch.is_some() {
        println!("{}", serde_json::to_string(status)?);
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(status)?);
    } else {
        print!("{}", render(status, paint));
    }
    Ok(())
}

pub(super) async fn read(loaded: &Loaded, model: &str, last_cycles: usize) -> Status {
    let config = &loaded.config;
    let registry = Registry::open(&config.registry);
    let ((kafka, _), redis, registry_row, models, rollout, replicas, ingest, retraining) = tokio::join!(
        doctor::check_kafka(loaded),
        doctor::bounded(doctor::check_redis(loaded)),
        part(async {
            let registry = registry.as_ref().map_err(|e| e.to_string())?;
            registry.models().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(format!("{} answers", registry.location()))
        }),
        part(async {
            let registry = registry.as_ref().map_err(|e| e.to_string())?;
            models(registry).await.map_err(|e| e.to_string())
        }),
        part(async {
            let registry = registry.as_ref().map_err(|e| e.to_string())?;
            rollout(loaded, registry, model).await.map_err(|e| format!("{e:#}"))
        }),
        replicas(&config.rollout.serving_metrics),
        part(standing(&config.kafka, &config.redis)),
        part(async {
            let registry = registry.as_ref().map_err(|e| e.to_string())?;
            let all = cycles(registry, model).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(all[all.len().saturating_sub(last_cycles)..].iter().map(CycleSummary::of).collect())
        }),
    );
    let dependency = |name, outcome: Outcome| match outcome {
        Outcome::Ok(detail) => Dependency { name, ok: true, detail },
        Outcome::Failed { detail, fix, .. } => Dependency { name, ok: false, detail: format!("{detail} ({fix})") },
    };
    let registry_row = match registry_row {
        Part::Read(detail) => Dependency { name: "registry", ok: true, detail },
        Part::Unreadable(detail) => Dependency { name: "registry", ok: false, detail },
    };
    Status {
        taken_at_ms: now_ms(),
        model: model.to_string(),
        dependencies: vec![dependency("kafka", kafka), dependency("redis", redis), registry_row],
        models,
        rollout,
        replicas,
        ingest,
        retraining,
    }
}

async fn models(registry: &Registry) -> adrank_registry::Result<Vec<Model>> {
    let mut models = Vec::new();
    for name in registry.models().await? {
        let versions = registry.versions(&name).await?;
        let state = registry.state(&name).await?;
        models.push(Model {
            newest: versions.iter().map(|m| m.version).max(),
            versions: versions.len(),
            aliases: state.aliases,
            name,
        });
    }
    Ok(models)
}

/// The model's newest rollout, with its arms' figures while it is under way: requests from the
/// replicas (at the current step), outcomes and the verdict from the training log.
async fn rollout(loaded: &Loaded, registry: &Registry, model: &str) -> anyhow::Result<Option<RolloutView>> {
    let Some(rollout) = registry.rollout(model).await? else { return Ok(None) };
    let now = now_ms();
    let step_age_secs = if rollout.is_active() { (now - rollout.step_started_ms).max(0) as f64 / 1e3 } else { 0.0 };
    let mut view = RolloutView { rollout, step_age_secs, arms: Vec::new(), verdict: None };
    if !view.rollout.is_active() {
        return Ok(Some(view));
    }
    let controller = super::rollout::controller(registry.clone(), loaded, model.to_string(), None)?;
    let (judged, scrape) = tokio::join!(
        controller.judge(&view.rollout),
        Scrape::read(&loaded.config.rollout.serving_metrics, PART_TIMEOUT / 2)
    );
    let outcomes = match judged {
        Ok(judged) => {
            let analysis = &judged.analysis;
            view.verdict = Some(format!("{}: {}", analysis.verdict.as_str(), analysis.reasons.join("; ")));
            Some(judged.outcomes)
        }
        Err(e) => {
            view.verdict = Some(format!("the outcomes cannot be read: {e}"));
            None
        }
    };
    let r = &view.rollout;
    for (arm, version) in [(Arm::Production, r.production), (Arm::Candidate, r.candidate)] {
        let mut requests = ArmRequests::default();
        for (key, figures) in &scrape.arms {
            if key.rollout == r.id && key.step == r.step && key.arm == arm.as_str() {
                requests.add(figures);
            }
        }
        let outcome = outcomes.as_ref().map(|(p, c)| if arm == Arm::Production { p } else { c });
        view.arms.push(arm_view(arm, version, &requests, outcome, step_age_secs));
    }
    Ok(Some(view))
}

fn arm_view(arm: Arm, version: u64, requests: &ArmRequests, outcome: Option<&Outcomes>, age: f64) -> ArmView {
    let default = Outcomes::default();
    let outcome = outcome.unwrap_or(&default);
    ArmView {
        arm: arm.as_str(),
        version,
        requests: requests.requests,
        requests_per_sec: if age > 0.0 { requests.requests as f64 / age } else { 0.0 },
        errors: requests.errors,
        p99_ms: requests.quantile(0.99).map(|s| s * 1e3),
        impressions: outcome.impressions,
        ctr: (outcome.impressions > 0).then(|| outcome.clicked as f64 / outcome.impressions as f64),
        calibration: (outcome.clicked > 0).then(|| outcome.predicted() / outcome.clicked as f64),
    }
}

/// Each replica named in `rollout.serving_metrics`: its `/readyz` and its ranking figures.
async fn replicas(addresses: &[String]) -> Vec<Replica> {
    let mut reads = tokio::task::JoinSet::new();
    for (i, address) in addresses.iter().cloned().enumerate() {
        reads.spawn(async move { (i, read_replica(address).await) });
    }
    let mut found = reads.join_all().await;
    found.sort_by_key(|(i, _)| *i);
    found.into_iter().map(|(_, replica)| replica).collect()
}

async fn read_replica(address: String) -> Replica {
    let endpoint = match Endpoint::parse(&address) {
        Ok(endpoint) => endpoint,
        Err(e) => return replica(&address, Part::Unreadable(e), None),
    };
    let readyz = endpoint.at("/readyz");
    let (ready, page) = tokio::join!(part(readyz.get_any_status()), part(endpoint.get()));
    let ready = match ready {
        Part::Read(body) => match serde_json::from_str(&body) {
            Ok(value) => Part::Read(value),
            Err(e) => Part::Unreadable(format!("/readyz is not JSON: {e}")),
        },
        Part::Unreadable(why) => Part::Unreadable(why),
    };
    let page = match page {
        Part::Read(page) => Some(page),
        Part::Unreadable(_) => None,
    };
    replica(&address, ready, page.as_deref())
}

fn replica(address: &str, ready: Part<serde_json::Value>, page: Option<&str>) -> Replica {
    use adrank_serving::metrics::{REQUEST_SECONDS, REQUESTS, SHED};
    let read = page.is_some();
    let page = page.unwrap_or_default();
    let quantile_ms =
        |q: &str| exposition::sum(page, REQUEST_SECONDS, &[("route", "rank"), ("quantile", q)]).map(|s| s * 1e3);
    let errors: Vec<f64> = exposition::samples(page, REQUESTS)
        .into_iter()
        .filter(|(labels, _)| {
            labels.get("route").is_some_and(|r| r == "rank") && labels.get("status").is_some_and(|s| s.starts_with('5'))
        })
        .map(|(_, value)| value)
        .collect();
    Replica {
        metrics: address.to_string(),
        ready,
        // A counter not on a page that was read has not counted yet: zero, not unknown.
        rank_requests: read.then(|| exposition::sum(page, REQUESTS, &[("route", "rank")]).unwrap_or(0.0)),
        // Folded from +0: an empty float sum is -0, which prints as "-0".
        rank_errors: read.then(|| errors.iter().fold(0.0, |sum, e| sum + e)),
        shed: read.then(|| exposition::sum(page, SHED, &[]).unwrap_or(0.0)),
        rank_p50_ms: quantile_ms("0.5"),
        rank_p99_ms: quantile_ms("0.99"),
    }
}

fn render(status: &Status, paint: Paint) -> String {
    let mut out = String::new();
    let heading = |out: &mut String, title: &str| {
        out.push_str(&format!("\n{}\n", paint.bold(title)));
    };
    out.push_str(&format!("adrank status, {}, model `{}`\n", utc_time(status.taken_at_ms), status.model));

    heading(&mut out, "DEPENDENCIES");
    let mut table = Table::new(["", "STATUS", "DETAIL"]);
    for d in &status.dependencies {
        let word = if d.ok { paint.good("ok") } else { paint.bad("FAIL") };
        table.row(vec![d.name.into(), word, d.detail.clone()]);
    }
    out.push_str(&table.render());

    heading(&mut out, "MODELS");
    match &status.models {
        Part::Read(models) if models.is_empty() => out.push_str("none yet: `adrank train` publishes the first\n"),
        Part::Read(models) => {
            let mut table = Table::new(["MODEL", "VERSIONS", "NEWEST", "ALIASES"]);
            for m in models {
                let aliases: Vec<String> = m.aliases.iter().map(|(a, v)| format!("{a}=v{v}")).collect();
                table.row(vec![
                    m.name.clone(),
                    m.versions.to_string(),
                    m.newest.map_or("-".into(), |v| format!("v{v}")),
                    aliases.join(" "),
                ]);
            }
            out.push_str(&table.render());
        }
        Part::Unreadable(why) => out.push_str(&format!("{}\n", paint.bad(&format!("cannot read: {why}")))),
    }

    heading(&mut out, "ROLLOUT");
    render_rollout(&mut out, &status.rollout, paint);

    heading(&mut out, "SERVING REPLICAS (rollout.serving_metrics)");
    let mut table =
        Table::new(["REPLICA", "READY", "DEFAULT VERSION", "FEATURES", "RANK REQUESTS", "5XX", "SHED", "P99"]);
    for r in &status.replicas {
        let figure = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.0}"));
        let (ready, version, features) = match &r.ready {
            Part::Read(body) => (
                if body["ready"] == true { paint.good("yes") } else { paint.bad("no") },
                format!("{} v{}", body["model"]["name"].as_str().unwrap_or("?"), body["model"]["version"]),
                body["features"].as_str().unwrap_or("?").to_string(),
            ),
            Part::Unreadable(why) => (paint.bad("down"), why.clone(), "-".into()),
        };
        table.row(vec![
            r.metrics.clone(),
            ready,
            version,
            features,
            figure(r.rank_requests),
            figure(r.rank_errors),
            figure(r.shed),
            r.rank_p99_ms.map_or("-".into(), |ms| format!("{ms:.1} ms")),
        ]);
    }
    out.push_str(&table.render());

    heading(&mut out, "INGEST (Redis watermarks against the broker)");
    match &status.ingest {
        Part::Read(topics) => {
            let mut table = Table::new(["TOPIC", "PARTITIONS", "MESSAGES", "NOT APPLIED", "OLDEST NOT APPLIED"]);
            for t in topics {
                let oldest = match (t.lag, t.oldest_pending_ms) {
                    (0, _) => paint.good("caught up"),
                    (_, Some(ms)) => paint.warn(&format!("{} ago", age(status.taken_at_ms - ms))),
                    (_, None) => paint.warn("unread"),
                };
                table.row(vec![
                    t.topic.clone(),
                    t.partitions.to_string(),
                    t.end.to_string(),
                    t.lag.to_string(),
                    oldest,
                ]);
            }
            out.push_str(&table.render());
        }
        Part::Unreadable(why) => out.push_str(&format!("{}\n", paint.bad(&format!("cannot read: {why}")))),
    }

    heading(&mut out, "RETRAINING (newest last)");
    match &status.retraining {
        Part::Read(cycles) if cycles.is_empty() => out.push_str("no cycles yet: `adrank retrain --loop` runs them\n"),
        Part::Read(cycles) => {
            let mut table = Table::new(["CYCLE", "STARTED (UTC)", "VERSION", "AUC", "VS PRODUCTION", "DECISION"]);
            for c in cycles {
                let decision = match c.decision.as_str() {
                    "blessed" => paint.good(&c.decision),
                    "refused" | "failed" => paint.bad(&c.decision),
                    _ => paint.warn(&c.decision),
                };
                table.row(vec![
                    c.id.to_string(),
                    c.started_at_ms.map_or("-".into(), super::retrain::utc_minute),
                    c.version.map_or("-".into(), |v| format!("v{v}")),
                    c.auc.map_or("-".into(), |auc| format!("{auc:.4}")),
                    c.vs_production(),
                    decision,
                ]);
            }
            out.push_str(&table.render());
        }
        Part::Unreadable(why) => out.push_str(&format!("{}\n", paint.bad(&format!("cannot read: {why}")))),
    }
    out
}

fn render_rollout(out: &mut String, rollout: &Part<Option<RolloutView>>, paint: Paint) {
    let view = match rollout {
        Part::Read(None) => return out.push_str("none: `adrank rollout start` starts one\n"),
        Part::Read(Some(view)) => view,
        Part::Unreadable(why) => return out.push_str(&format!("{}\n", paint.bad(&format!("cannot read: {why}")))),
    };
    let r = &view.rollout;
    let status = match r.status {
        RolloutStatus::Running => paint.good(r.status.as_str()),
        RolloutStatus::Paused => paint.warn(r.status.as_str()),
        RolloutStatus::Promoted => paint.good(r.status.as_str()),
        RolloutStatus::RolledBack => paint.bad(r.status.as_str()),
    };
    let plan: Vec<String> =
        r.plan.iter().enumerate().map(|(i, w)| if i == r.step { format!("[{w}%]") } else { format!("{w}%") }).collect();
    let split = if r.is_shadow() { "shadow (candidate scores copies)".to_string() } else { format!("{}%", r.weight()) };
    out.push_str(&format!(
        "rollout {} {status}: v{} (production) against v{} (candidate), candidate's users {split}, plan {}\n",
        r.id,
        r.production,
        r.candidate,
        plan.join(" -> ")
    ));
    if r.is_active() {
        out.push_str(&format!("at this step for {}\n", age((view.step_age_secs * 1e3) as i64)));
    }
    out.push_str(&format!(
        "last change {} by {}: {} ({})\n",
        utc_time(r.changed_at_ms),
        r.changed_by,
        r.change,
        r.reason
    ));
    if view.arms.is_empty() {
        return;
    }
    let mut table =
        Table::new(["ARM", "VERSION", "REQUESTS", "REQ/S", "5XX", "P99", "IMPRESSIONS", "CTR", "PREDICTED/OBSERVED"]);
    for arm in &view.arms {
        let ratio = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.4}"));
        table.row(vec![
            arm.arm.into(),
            format!("v{}", arm.version),
            arm.requests.to_string(),
            format!("{:.1}", arm.requests_per_sec),
            arm.errors.to_string(),
            arm.p99_ms.map_or("-".into(), |ms| format!("{ms:.1} ms")),
            arm.impressions.to_string(),
            ratio(arm.ctr),
            ratio(arm.calibration),
        ]);
    }
    out.push_str(&table.render());
    if let Some(verdict) = &view.verdict {
        out.push_str(&format!("analysis: {verdict}\n"));
    }
}

/// `45 s`, `12 min`, `3.5 h`, `2.0 d`.
fn age(ms: i64) -> String {
    let secs = ms.max(0) as f64 / 1e3;
    match secs {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} d", s / 86_400.0),
    }
}
