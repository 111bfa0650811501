//! After the traffic: what the loop did, from the registry's own records (versions, retraining
//! cycles, every rollout document), in order, and the run's verdict.

use adrank_loadtest::report::{LoopEvent, Report};
use adrank_registry::{PRODUCTION, Registry, Rollout, rollout::Status};
use adrank_trainer::retrain::{Cycle, Outcome, cycles};

use crate::table::Table;

/// The loop as the registry recorded it.
pub(super) struct Story {
    pub(super) events: Vec<LoopEvent>,
    /// The newest document of each rollout, oldest first.
    rollouts: Vec<Rollout>,
    cycles: Vec<Cycle>,
    name: String,
    production: Option<u64>,
}

/// The longest detail kept from a decision's reason (they carry every figure).
const DETAIL: usize = 240;

fn clip(text: &str, most: usize) -> String {
    match text.char_indices().nth(most) {
        Some((at, _)) => format!("{} …", &text[..at]),
        None => text.to_string(),
    }
}

/// Everything the registry holds of `name`, timed from the load's start, with what the demo
/// itself did.
pub(super) async fn gather(
    registry: &Registry,
    name: &str,
    load_started_ms: i64,
    injected: Vec<LoopEvent>,
) -> anyhow::Result<Story> {
    let at = |ms: i64| (ms - load_started_ms) as f64 / 1000.0;
    let mut events = injected;
    for manifest in registry.versions(name).await? {
        events.push(LoopEvent {
            at_s: at(manifest.created_at_ms),
            kind: "version".into(),
            version: Some(manifest.version),
            text: format!(
                "published{}: {}",
                manifest.parent.map_or(String::new(), |p| format!(" (warm-started from v{p})")),
                manifest.reason
            ),
        });
    }
    let cycles = cycles(registry, name).await?;
    for cycle in &cycles {
        for record in cycle.steps.values() {
            let text = match &record.outcome {
                Outcome::Train { version, examples, clicks, epochs, .. } => format!(
                    "cycle {}: trained v{version} on {examples} examples ({clicks} clicks), {epochs} epochs",
                    cycle.id
                ),
                Outcome::Gate { verdict } => {
                    let passed = verdict.checks.iter().filter(|c| c.passed).count();
                    let mut text = format!(
                        "cycle {}: gates {} ({passed} of {} checks passed",
                        cycle.id,
                        verdict.decision,
                        verdict.checks.len()
                    );
                    if !verdict.reasons.is_empty() {
                        text.push_str(&format!(": {}", verdict.reasons.join("; ")));
                    }
                    text.push(')');
                    text
                }
                Outcome::Done { error: Some(error), .. } => format!("cycle {}: failed: {error}", cycle.id),
                _ => continue,
            };
            events.push(LoopEvent {
                at_s: at(record.finished_at_ms),
                kind: "cycle".into(),
                version: cycle.version(),
                text: clip(&text, DETAIL),
            });
        }
    }
    let history = registry.rollout_history(name).await?;
    for doc in &history {
        let text = if doc.reason.is_empty() { doc.change.clone() } else { format!("{}: {}", doc.change, doc.reason) };
        events.push(LoopEvent {
            at_s: at(doc.changed_at_ms),
            kind: "rollout".into(),
            version: Some(doc.candidate),
            text: clip(&text, DETAIL),
        });
    }
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let rollouts = super::watch::latest(&history).into_iter().cloned().collect();
    let production = registry.state(name).await?.aliases.get(PRODUCTION).copied();
    Ok(Story { events, rollouts, cycles, name: name.to_string(), production })
}

/// The verdict: one line, and whether every stage ran.
pub(super) struct Verdict {
    pub(super) line: String,
    pub(super) complete: bool,
}

/// Where a rollout ended: `shadow`, `25% canary` …
fn stage(rollout: &Rollout) -> String {
    match rollout.plan.get(rollout.step) {
        Some(0) => "the shadow step".into(),
        Some(w) => format!("the {w}% canary step"),
        None => format!("step {}", rollout.step),
    }
}

/// The verdict on the run: complete when the bad candidate was stopped and at least `promotions`
/// retrained candidates were promoted.
pub(super) fn verdict(story: &Story, report: &Report, bad: u64, promotions: u32) -> Verdict {
    let mut parts = Vec::new();
    let decided: Vec<String> = ["blessed", "refused", "inconclusive", "failed"]
        .iter()
        .filter_map(|d| {
            let n = story.cycles.iter().filter(|c| c.status() == *d).count();
            (n > 0).then(|| format!("{n} {d}"))
        })
        .collect();
    parts.push(format!("{} retraining cycles ({})", story.cycles.len(), decided.join(", ")));
    let promoted: Vec<&Rollout> =
        story.rollouts.iter().filter(|r| r.status == Status::Promoted && r.candidate != bad).collect();
    let through = |r: &Rollout| {
        r.plan
            .iter()
            .map(|w| if *w == 0 { "shadow".into() } else { format!("{w}%") })
            .collect::<Vec<String>>()
            .join(" -> ")
    };
    parts.push(match promoted.first() {
        Some(first) => {
            let n = promoted.len();
            format!("{n} candidate{} promoted through {}", if n == 1 { "" } else { "s" }, through(first))
        }
        None => "no retrained candidate promoted".into(),
    });
    let bad_rollout = story.rollouts.iter().rev().find(|r| r.candidate == bad);
    let bad_stopped = bad_rollout.is_some_and(|r| r.status == Status::RolledBack);
    parts.push(match bad_rollout {
        Some(r) if r.status == Status::RolledBack => {
            format!("the bad candidate v{bad} was stopped at {} ({})", stage(r), clip(&r.reason, 120))
        }
        Some(r) => format!("the bad candidate v{bad} was NOT stopped: its rollout is {}", r.status.as_str()),
        None => format!("the bad candidate v{bad} was never started"),
    });
    if let Some(production) = story.production {
        let key = format!("{}/{production}", story.name);
        match report.versions.iter().find(|v| v.version == key) {
            Some(v) => parts.push(format!(
                "production v{production}'s expected RPM {:.1} is {:.2}x the bid-only ranking's and {:.2}x the learnable ceiling's on its requests (oracle {:.1})",
                v.expected_rpm,
                v.expected_rpm / v.bid_only_rpm,
                v.expected_rpm / v.ceiling_rpm,
                v.oracle_rpm
            )),
            None => parts.push(format!("production v{production} served no measured request")),
        }
    }
    let run = &report.run;
    let errors: u64 = run.failures.values().sum::<u64>()
        + run.statuses.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum::<u64>();
    parts.push(format!(
        "p99 {:.1} ms, {errors} errors in {} requests",
        run.latency_ms.get("p99").copied().unwrap_or(0.0),
        run.measured
    ));
    let complete = bad_stopped && promoted.len() >= promotions as usize;
    let head = if complete { "verdict: the whole loop ran" } else { "verdict: the loop did NOT show every stage" };
    Verdict { line: format!("{head}: {}.", parts.join("; ")), complete }
}

/// The timeline as a terminal table.
pub(super) fn render(events: &[LoopEvent]) -> String {
    let mut table = Table::new(["WHEN", "WHAT", "VERSION", "DETAIL"]);
    for e in events {
        table.row(vec![
            format!("{:+.0} s", e.at_s),
            e.kind.clone(),
            e.version.map_or("-".into(), |v| format!("v{v}")),
            e.text.clone(),
        ]);
    }
    table.render()
}
