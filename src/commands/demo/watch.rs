//! While the traffic flows: the bad candidate is started by hand, a status line every few
//! seconds says where the loop is, and the traffic is ended once the loop has shown everything.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use adrank_contracts::training_log::utc_hour;
use adrank_loadtest::{
    generator::{Progress, RunReport},
    ranking::Ranking,
    report::LoopEvent,
};
use adrank_registry::{Decision, Registry, Rollout, rollout::Status};
use adrank_trainer::retrain::cycles;
use tokio::task::JoinHandle;

/// What the traffic waits for before it may end early.
#[derive(Debug, Clone, Copy)]
pub(super) struct Goal {
    /// The bad candidate's version: its rollout must end without promotion.
    pub(super) bad: u64,
    /// Retrained candidates promoted.
    pub(super) promotions: u32,
    /// How long the newest production serves after its promotion.
    pub(super) settle: Duration,
}

const EVERY: Duration = Duration::from_secs(5);

pub(super) struct Watcher {
    registry: Registry,
    name: String,
    dashboard: SocketAddr,
    goal: Goal,
}

type Load = JoinHandle<Result<RunReport, adrank_loadtest::generator::GeneratorError>>;

impl Watcher {
    pub(super) fn new(registry: Registry, name: String, dashboard: SocketAddr, goal: Goal) -> Self {
        Self { registry, name, dashboard, goal }
    }

    /// Watches until the load ends (or ends it once the goal is met); returns what the demo
    /// itself did to the loop.
    pub(super) async fn watch(
        &self,
        ranking: &Ranking,
        progress: &Progress,
        load: &Load,
    ) -> anyhow::Result<Vec<LoopEvent>> {
        let started = Instant::now();
        let mut events = Vec::new();
        let mut injected = false;
        let mut last = (0u64, BTreeMap::new());
        let mut promoted_at: Option<Instant> = None;
        let mut promotions_seen = 0;
        let mut ticks = 0u32;
        while !load.is_finished() {
            if !injected {
                injected = self.inject(started, &mut events).await?;
            }
            tokio::time::sleep(EVERY).await;
            ticks += 1;
            let reading = progress.read();
            let clicks = ranking.clicks_by_version();
            let history = self.registry.rollout_history(&self.name).await.unwrap_or_default();
            let rollouts = latest(&history);
            let promotions =
                rollouts.iter().filter(|r| r.status == Status::Promoted && r.candidate != self.goal.bad).count();
            if promotions > promotions_seen {
                promotions_seen = promotions;
                promoted_at = Some(Instant::now());
            }
            let line = Line {
                elapsed: started.elapsed(),
                simulated_ms: ranking.simulated_ms(),
                rate: (reading.done - last.0) as f64 / EVERY.as_secs_f64(),
                p99_ms: reading.window_p99_ms,
                errors: reading.errors,
                rollout: rollouts.last().copied(),
                retraining: self.retraining().await,
                ctr: windowed_ctr(&last.1, &clicks),
            };
            eprintln!("{}", line.render());
            if ticks % 12 == 1 {
                eprintln!("          (live dashboard: http://{}/)", self.dashboard);
            }
            last = (reading.done, clicks);
            let bad_stopped = rollouts.iter().any(|r| r.candidate == self.goal.bad && r.status == Status::RolledBack);
            // With no promotion to wait for, the bad candidate's rollback ends it.
            let settled = self.goal.promotions == 0 || promoted_at.is_some_and(|at| at.elapsed() >= self.goal.settle);
            if bad_stopped && promotions >= self.goal.promotions as usize && settled && !progress.stopped() {
                eprintln!("          the loop has shown everything: ending the traffic");
                progress.stop();
            }
        }
        Ok(events)
    }

    /// Starts the bad candidate's rollout once no other runs; true once started.
    async fn inject(&self, started: Instant, events: &mut Vec<LoopEvent>) -> anyhow::Result<bool> {
        let current = self.registry.rollout(&self.name).await?;
        if current.as_ref().is_some_and(Rollout::is_active) {
            return Ok(false);
        }
        let decision = Decision {
            expected_seq: current.map_or(0, |r| r.seq),
            by: "adrank demo".into(),
            reason: "pushed by hand without the offline gates: a model trained on shuffled labels".into(),
            figures: BTreeMap::new(),
        };
        let plan = vec![0, 25, 50, 100];
        match self.registry.start_rollout(&self.name, self.goal.bad, plan, decision).await {
            Ok(rollout) => {
                events.push(LoopEvent {
                    at_s: started.elapsed().as_secs_f64(),
                    kind: "injected".into(),
                    version: Some(self.goal.bad),
                    text: format!(
                        "the bad candidate's rollout {} started by hand, skipping the offline gates",
                        rollout.id
                    ),
                });
                eprintln!("          injected: rollout {} of the bad candidate v{}", rollout.id, self.goal.bad);
                Ok(true)
            }
            // The retraining loop started one in between: try again once it ends.
            Err(adrank_registry::Error::RolloutChanged { .. } | adrank_registry::Error::Rollout(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The retraining loop's newest cycle, in a few words.
    async fn retraining(&self) -> String {
        match cycles(&self.registry, &self.name).await {
            Ok(all) => match all.last() {
                Some(cycle) if cycle.is_done() => format!("cycle {} {}", cycle.id, cycle.status()),
                Some(cycle) => {
                    format!("cycle {} at {}", cycle.id, cycle.steps.keys().next_back().map_or("window", |s| s.name()))
                }
                None => "no cycle".into(),
            },
            Err(e) => format!("unreadable ({e})"),
        }
    }
}

/// The newest document of each rollout, oldest rollout first.
pub(super) fn latest(history: &[Rollout]) -> Vec<&Rollout> {
    let mut by_id: BTreeMap<u64, &Rollout> = BTreeMap::new();
    for r in history {
        let entry = by_id.entry(r.id).or_insert(r);
        if r.seq > entry.seq {
            *entry = r;
        }
    }
    by_id.into_values().collect()
}

/// CTR by version over the last interval (versions with a few impressions at least).
fn windowed_ctr(before: &BTreeMap<String, (u64, u64)>, now: &BTreeMap<String, (u64, u64)>) -> Vec<(String, f64)> {
    now.iter()
        .filter_map(|(version, (impressions, clicks))| {
            let (i0, c0) = before.get(version).copied().unwrap_or_default();
            let shown = impressions - i0;
            let short = version.rsplit('/').next().unwrap_or(version);
            (shown >= 50).then(|| (format!("v{short}"), (clicks - c0) as f64 / shown as f64))
        })
        .collect()
}

/// One status line.
struct Line<'a> {
    elapsed: Duration,
    simulated_ms: Option<i64>,
    rate: f64,
    p99_ms: f64,
    errors: u64,
    rollout: Option<&'a Rollout>,
    retraining: String,
    ctr: Vec<(String, f64)>,
}

impl Line<'_> {
    fn render(&self) -> String {
        let simulated = self.simulated_ms.map_or(String::new(), |ms| format!(" (simulated {})", utc_hour(ms)));
        let rollout = match self.rollout {
            Some(r) if r.is_active() => {
                let step = if r.is_shadow() { "shadow".to_string() } else { format!("{}% canary", r.weight()) };
                format!("rollout {}: v{} vs v{} at {step}", r.id, r.candidate, r.production)
            }
            Some(r) => format!("rollout {} {} (v{})", r.id, r.status.as_str(), r.candidate),
            None => "no rollout yet".into(),
        };
        let ctr: Vec<String> = self.ctr.iter().map(|(v, ctr)| format!("{v} {ctr:.4}")).collect();
        format!(
            "{:>5.0} s{simulated} | {:.0} req/s, p99 {:.1} ms, {} errors | {rollout} | retrain: {} | CTR {}",
            self.elapsed.as_secs_f64(),
            self.rate,
            self.p99_ms,
            self.errors,
            self.retraining,
            if ctr.is_empty() { "-".into() } else { ctr.join(" · ") }
        )
    }
}
