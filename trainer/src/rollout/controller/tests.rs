use std::collections::BTreeMap;

use adrank_contracts::{
    events::{Impression, RawFeatures},
    training_log::{Checkpoint, CommitRequest, Example},
};
use adrank_registry::{Change, Draft, PRODUCTION, RegistryConfig, rollout::DEFAULT_PLAN};

use super::*;

const MIN: i64 = 60_000;

struct Fixture {
    _dir: tempfile::TempDir,
    controller: Controller,
    next_seq: u64,
}

/// A registry with versions 1 (production) to `versions`, an empty training log, and a
/// controller that needs 1,000 impressions and 30 clicks per arm and 10 minutes per step.
async fn fixture(versions: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = RegistryConfig { location: dir.path().join("registry").display().to_string() };
    let registry = Registry::open(&config).unwrap();
    for v in 1..=versions {
        let draft = Draft::example("ctr", vec![v as u8; 8], &format!("version {v}"));
        registry.publish(draft).await.unwrap();
    }
    let first =
        Change { expected_seq: 0, set: vec![(PRODUCTION.into(), Some(1))], by: "test".into(), reason: "first".into() };
    registry.change("ctr", first).await.unwrap();
    let log = TrainingLog::open(&dir.path().join("log").display().to_string()).unwrap();
    let config = RolloutConfig {
        min_impressions: 1_000,
        min_clicks: 30,
        min_step_secs: 600,
        max_step_secs: 3_600,
        // Judged on the outcomes alone, except where a test names replicas.
        serving_metrics: Vec::new(),
        ..RolloutConfig::default()
    };
    let controller = Controller { registry, log, model: "ctr".into(), config, by: "controller".into() };
    Fixture { _dir: dir, controller, next_seq: 0 }
}

impl Fixture {
    async fn start(&self, candidate: u64) -> Rollout {
        let registry = &self.controller.registry;
        let current = registry.rollout("ctr").await.unwrap().map_or(0, |r| r.seq);
        let decision =
            Decision { expected_seq: current, by: "test".into(), reason: "test".into(), figures: BTreeMap::new() };
        registry.start_rollout("ctr", candidate, DEFAULT_PLAN.to_vec(), decision).await.unwrap()
    }

    /// Commits `impressions` examples served by `version` in `arm` of `rollout`, `clicked` of
    /// them clicked, each scored `score`.
    async fn serve(&mut self, rollout: &Rollout, arm: Arm, impressions: u64, clicked: u64, score: f64) {
        self.serve_shadowed(rollout, arm, (impressions, clicked), score, None).await;
    }

    /// The same, each impression also scored `shadow` by the shadowed candidate.
    async fn serve_shadowed(
        &mut self,
        rollout: &Rollout,
        arm: Arm,
        (impressions, clicked): (u64, u64),
        score: f64,
        shadow: Option<f64>,
    ) {
        let version = match arm {
            Arm::Production => rollout.production,
            Arm::Candidate => rollout.candidate,
        };
        let examples: Vec<Example> = (0..impressions)
            .map(|i| {
                let mut impression = Impression::example(&format!("i-{}-{i}", self.next_seq), RawFeatures::new());
                impression.event_time_ms = 1_767_225_600_000;
                impression.model_version = version.to_string();
                impression.score = score;
                impression.rollout = Some(RolloutArm { id: rollout.id, arm: arm.as_str().into() });
                impression.shadow_score = shadow;
                Example {
                    impression,
                    partition: 0,
                    offset: i as i64,
                    clicks: u32::from(i < clicked),
                    first_click_ms: None,
                }
            })
            .collect();
        let request = CommitRequest {
            partition: 0,
            seq: self.next_seq,
            checkpoint: Checkpoint::default(),
            late_clicks: 0,
            orphan_clicks: 0,
        };
        self.controller.log.commit(request, examples).await.unwrap();
        self.next_seq += 1;
    }
}

fn acted(look: &Look) -> (Action, &Rollout) {
    match look {
        Look::Acted { action, rollout, .. } => (*action, rollout),
        other => panic!("expected a decision, got {other:?}"),
    }
}

#[tokio::test]
async fn a_worse_candidate_is_rolled_back_with_the_figures_that_showed_it() {
    let mut f = fixture(2).await;
    let started = f.start(2).await;
    let t0 = started.step_started_ms;
    // Shadow: inconclusive until the candidate has scored enough of production's impressions;
    // then calibrated, and advanced once the step's minimum has passed.
    let look = f.controller.look(t0 + MIN).await.unwrap();
    let Look::Waiting { reason, .. } = look else { panic!("expected to wait: {look:?}") };
    assert!(reason.contains("the candidate shadowed 0 impressions"), "{reason}");
    f.serve_shadowed(&started, Arm::Production, (2_000, 100), 0.05, Some(0.055)).await;
    let look = f.controller.look(t0 + 5 * MIN).await.unwrap();
    let Look::Waiting { analysis, .. } = look else { panic!("expected to wait: {look:?}") };
    assert_eq!(analysis.verdict, Verdict::Passed);
    let look = f.controller.look(t0 + 10 * MIN).await.unwrap();
    let (action, five) = acted(&look);
    assert_eq!((action, five.weight()), (Action::Advance, 5));
    let five = five.clone();

    // Thin data: inconclusive, whatever it shows.
    let t5 = five.step_started_ms;
    f.serve(&five, Arm::Production, 2_000, 100, 0.05).await;
    f.serve(&five, Arm::Candidate, 500, 5, 0.05).await;
    let Look::Waiting { analysis, reason, .. } = f.controller.look(t5 + 2 * MIN).await.unwrap() else {
        panic!("expected to wait");
    };
    assert_eq!(analysis.verdict, Verdict::Inconclusive);
    assert!(reason.contains("candidate arm has 500 impressions"), "{reason}");

    // 1,500 more candidate impressions with 2% clicks against production's 5%: rolled back at
    // once, before the step's minimum time.
    f.serve(&five, Arm::Candidate, 1_500, 35, 0.05).await;
    let look = f.controller.look(t5 + 3 * MIN).await.unwrap();
    let (action, ended) = acted(&look);
    assert_eq!((action, ended.status, ended.weight()), (Action::RollBack, Status::RolledBack, 0));
    assert!(ended.reason.starts_with("analysis failed after 3m00s at 5%: CTR"), "{}", ended.reason);
    assert_eq!(ended.changed_by, "controller");
    assert_eq!(ended.figures["candidate_impressions"], 2_000.0);
    assert_eq!(ended.figures["candidate_ctr"], 0.02);
    assert_eq!(ended.figures["production_ctr"], 0.05);
    assert_eq!(f.controller.registry.state("ctr").await.unwrap().aliases[PRODUCTION], 1);
    // Ended: nothing more to do.
    assert!(matches!(f.controller.look(t5 + 4 * MIN).await.unwrap(), Look::Idle(Some(_))));
}

#[tokio::test]
async fn a_good_candidate_advances_step_by_step_only_after_each_steps_minimum_and_is_promoted() {
    let mut f = fixture(2).await;
    let started = f.start(2).await;
    f.serve_shadowed(&started, Arm::Production, (2_000, 100), 0.05, Some(0.05)).await;
    let look = f.controller.look(started.step_started_ms + 10 * MIN).await.unwrap();
    let mut current = acted(&look).1.clone();
    // 30% more clicks than production, well predicted.
    f.serve(&current, Arm::Production, 20_000, 1_000, 0.05).await;
    f.serve(&current, Arm::Candidate, 20_000, 1_300, 0.065).await;
    for expected in [25, 50, 100] {
        // Passed, but the step is young: wait. (Decisions stamp the step with the real clock;
        // the looks are made at times relative to it.)
        let look = f.controller.look(current.step_started_ms + 5 * MIN).await.unwrap();
        let Look::Waiting { analysis, reason, .. } = look else { panic!("expected to wait: {look:?}") };
        assert_eq!(analysis.verdict, Verdict::Passed);
        assert!(reason.starts_with("passed; the step has lasted 5m00s"), "{reason}");
        let look = f.controller.look(current.step_started_ms + 10 * MIN).await.unwrap();
        let (action, next) = acted(&look);
        assert_eq!((action, next.weight(), next.status), (Action::Advance, expected, Status::Running));
        current = next.clone();
    }
    let look = f.controller.look(current.step_started_ms + 10 * MIN).await.unwrap();
    let (_, promoted) = acted(&look);
    assert_eq!(promoted.status, Status::Promoted);
    assert_eq!(f.controller.registry.state("ctr").await.unwrap().aliases[PRODUCTION], 2);
}

#[tokio::test]
async fn too_little_traffic_waits_then_pauses_and_a_paused_rollout_is_left_alone() {
    let mut f = fixture(2).await;
    let started = f.start(2).await;
    let t0 = started.step_started_ms;
    f.serve_shadowed(&started, Arm::Production, (2_000, 100), 0.05, Some(0.05)).await;
    let look = f.controller.look(t0 + 10 * MIN).await.unwrap();
    let five = acted(&look).1.clone();
    f.serve(&five, Arm::Production, 900, 45, 0.05).await;
    f.serve(&five, Arm::Candidate, 100, 5, 0.05).await;
    let t5 = five.step_started_ms;
    assert!(matches!(f.controller.look(t5 + 59 * MIN).await.unwrap(), Look::Waiting { .. }));
    let look = f.controller.look(t5 + 60 * MIN).await.unwrap();
    let (action, paused) = acted(&look);
    assert_eq!((action, paused.status, paused.weight()), (Action::Pause, Status::Paused, 5));
    assert!(paused.reason.starts_with("inconclusive after 1h00m at 5%"), "{}", paused.reason);
    assert!(matches!(f.controller.look(t5 + 600 * MIN).await.unwrap(), Look::Idle(Some(_))));
}

#[tokio::test]
async fn a_candidate_miscalibrated_in_the_shadow_is_rolled_back_before_it_serves_anyone() {
    let mut f = fixture(2).await;
    let started = f.start(2).await;
    // Production's impressions click at 5%; the shadowed candidate predicted 15%.
    f.serve_shadowed(&started, Arm::Production, (4_000, 200), 0.05, Some(0.15)).await;
    let look = f.controller.look(started.step_started_ms + MIN).await.unwrap();
    let (action, ended) = acted(&look);
    assert_eq!((action, ended.status, ended.weight()), (Action::RollBack, Status::RolledBack, 0));
    assert!(ended.reason.contains("calibration: the candidate predicts"), "{}", ended.reason);
    assert_eq!(ended.figures["shadowed_impressions"], 4_000.0);
}

#[tokio::test]
async fn of_two_controllers_deciding_on_one_document_one_acts_and_the_other_sees_the_race() {
    let f = fixture(2).await;
    let started = f.start(2).await;
    let now = started.step_started_ms + 10 * MIN;
    let other = Controller { by: "controller-2".into(), ..f.controller.clone() };
    let first = f.controller.act(started.clone(), Action::Advance, "first".into(), None).await.unwrap();
    assert_eq!(acted(&first).1.weight(), 5);
    let second = other.act(started.clone(), Action::Advance, "second".into(), None).await.unwrap();
    assert!(matches!(second, Look::Raced { .. }), "{second:?}");
    // The next look of either starts from the document that landed.
    assert!(matches!(other.look(now).await.unwrap(), Look::Waiting { .. }));
}

/// An arm's successful answers as `(count, seconds)` groups, and its 5xx answers.
type Answers<'a> = (Arm, &'a [(u64, f64)], u64);

/// A replica's `/metrics` page for `rollout`'s current step.
fn page(rollout: &Rollout, arms: [Answers<'_>; 2]) -> String {
    let metric = adrank_contracts::arm_requests::METRIC;
    let mut text = format!("# TYPE {metric} histogram\n");
    for (arm, answers, errors) in arms {
        let labels = format!("rollout=\"{}\",step=\"{}\",arm=\"{}\"", rollout.id, rollout.step, arm.as_str());
        let bounds = adrank_contracts::arm_requests::buckets();
        for bound in bounds.iter().copied().chain([f64::INFINITY]) {
            let within: u64 = answers.iter().filter(|(_, s)| *s <= bound).map(|(n, _)| n).sum();
            let le = if bound.is_finite() { bound.to_string() } else { "+Inf".into() };
            text += &format!("{metric}_bucket{{{labels},status=\"2xx\",le=\"{le}\"}} {within}\n");
        }
        let ok: u64 = answers.iter().map(|(n, _)| n).sum();
        text += &format!("{metric}_count{{{labels},status=\"2xx\"}} {ok}\n");
        text += &format!("{metric}_count{{{labels},status=\"5xx\"}} {errors}\n");
    }
    text
}

/// Answers every HTTP request on a loopback port with `body`: a replica's `/metrics` as the
/// controller reads it. Returns the page's address.
async fn replica(body: String) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n @ 1..) = stream.read(&mut buf).await else { return };
                    request.extend_from_slice(&buf[..n]);
                }
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = stream.write_all((head + &body).as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/metrics")
}

#[tokio::test]
async fn a_candidate_slower_on_the_replicas_is_rolled_back_however_well_it_ranks() {
    let mut f = fixture(2).await;
    let started = f.start(2).await;
    f.serve_shadowed(&started, Arm::Production, (2_000, 100), 0.05, Some(0.05)).await;
    let five = acted(&f.controller.look(started.step_started_ms + 10 * MIN).await.unwrap()).1.clone();
    // Clicks say the candidate is better...
    f.serve(&five, Arm::Production, 20_000, 1_000, 0.05).await;
    f.serve(&five, Arm::Candidate, 20_000, 1_300, 0.065).await;
    // ...but one replica in two is not read: nothing is decided on half the errors.
    let production: &[(u64, f64)] = &[(2_000, 0.004)];
    let fast = replica(page(&five, [(Arm::Production, production, 0), (Arm::Candidate, &[(1_000, 0.004)], 0)])).await;
    let unread = format!("http://127.0.0.1:{}/metrics", closed_port());
    f.controller.config.serving_metrics = vec![fast.clone(), unread.clone()];
    let look = f.controller.look(five.step_started_ms + 10 * MIN).await.unwrap();
    let Look::Waiting { analysis, reason, .. } = look else { panic!("expected to wait: {look:?}") };
    assert_eq!(analysis.verdict, Verdict::Inconclusive);
    assert!(reason.contains(&format!("a replica was not read: {unread}: cannot connect")), "{reason}");
    // Both read, both fast: advanced, the replicas' figures in the decision.
    let second = replica(page(&five, [(Arm::Production, production, 0), (Arm::Candidate, &[(1_000, 0.004)], 1)])).await;
    f.controller.config.serving_metrics = vec![fast, second];
    let look = f.controller.look(five.step_started_ms + 10 * MIN).await.unwrap();
    let (action, twenty_five) = acted(&look);
    assert_eq!((action, twenty_five.weight()), (Action::Advance, 25), "{}", twenty_five.reason);
    assert_eq!(twenty_five.figures["candidate_requests"], 2_001.0);
    assert_eq!(twenty_five.figures["candidate_errors"], 1.0);
    let twenty_five = twenty_five.clone();
    // At 25%, one answer in ten takes 80 ms where production's p99 is 4 ms: rolled back.
    let slow: &[(u64, f64)] = &[(900, 0.004), (100, 0.08)];
    let slow = replica(page(&twenty_five, [(Arm::Production, production, 0), (Arm::Candidate, slow, 0)])).await;
    f.controller.config.serving_metrics = vec![slow];
    let look = f.controller.look(twenty_five.step_started_ms + MIN).await.unwrap();
    let (action, ended) = acted(&look);
    assert_eq!((action, ended.status), (Action::RollBack, Status::RolledBack));
    assert!(ended.reason.contains("latency: "), "{}", ended.reason);
    assert!(ended.figures["candidate_p99_ms"] > 50.0, "{:?}", ended.figures);
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
