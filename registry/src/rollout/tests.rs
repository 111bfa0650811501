use super::*;
use crate::{Draft, RegistryConfig};

async fn registry_with_versions(versions: u64) -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let config = RegistryConfig { location: dir.path().display().to_string() };
    let registry = Registry::open(&config).unwrap();
    for v in 0..versions {
        let draft = Draft::example("ctr", vec![v as u8; 8], &format!("version {}", v + 1));
        registry.publish(draft).await.unwrap();
    }
    let change =
        Change { expected_seq: 0, set: vec![(PRODUCTION.into(), Some(1))], by: "test".into(), reason: "first".into() };
    registry.change("ctr", change).await.unwrap();
    (dir, registry)
}

fn decision(expected_seq: u64, reason: &str) -> Decision {
    Decision { expected_seq, by: "test".into(), reason: reason.into(), figures: BTreeMap::new() }
}

#[tokio::test]
async fn a_rollout_steps_through_its_plan_and_promotion_moves_production() {
    let (_dir, registry) = registry_with_versions(2).await;
    let started = registry.start_rollout("ctr", 2, DEFAULT_PLAN.to_vec(), decision(0, "retrained")).await.unwrap();
    assert_eq!((started.id, started.production, started.candidate, started.weight()), (1, 1, 2, 0));
    assert!(started.is_shadow());
    let mut seq = started.seq;
    for expected in [5, 25, 50, 100] {
        let mut figures = BTreeMap::new();
        figures.insert("ctr_ratio".to_string(), 1.1);
        let d = Decision { figures, ..decision(seq, "analysis passed") };
        let next = registry.act_on_rollout("ctr", Action::Advance, d).await.unwrap();
        assert_eq!((next.weight(), next.status), (expected, Status::Running));
        assert_eq!(next.figures["ctr_ratio"], 1.1);
        seq = next.seq;
    }
    assert_eq!(registry.state("ctr").await.unwrap().aliases[PRODUCTION], 1, "not yet promoted");
    let promoted = registry.act_on_rollout("ctr", Action::Advance, decision(seq, "last step passed")).await.unwrap();
    assert_eq!((promoted.status, promoted.weight()), (Status::Promoted, 100));
    assert_eq!(registry.state("ctr").await.unwrap().aliases[PRODUCTION], 2);
    // The audit log: every document, oldest first.
    let history = registry.rollout_history("ctr").await.unwrap();
    assert_eq!(history.len(), 6);
    assert!(history[5].change.contains("promoted version 2"), "{}", history[5].change);
    // An ended rollout takes no action; a new one starts against the new production.
    let ended = registry.act_on_rollout("ctr", Action::Pause, decision(promoted.seq, "x")).await;
    assert!(matches!(ended, Err(Error::Rollout(_))), "{ended:?}");
    let again = registry.start_rollout("ctr", 1, vec![0, 100], decision(promoted.seq, "rollback drill")).await.unwrap();
    assert_eq!((again.id, again.production, again.candidate), (2, 2, 1));
    assert_ne!(again.salt, started.salt, "each rollout splits users afresh");
}

#[tokio::test]
async fn changes_are_compare_and_swap_and_transitions_are_checked() {
    let (_dir, registry) = registry_with_versions(2).await;
    let started = registry.start_rollout("ctr", 2, vec![0, 10, 100], decision(0, "go")).await.unwrap();
    // A second start while one runs, and a start on a stale state, are refused.
    assert!(matches!(
        registry.start_rollout("ctr", 2, vec![100], decision(started.seq, "x")).await,
        Err(Error::Rollout(_))
    ));
    assert!(matches!(
        registry.start_rollout("ctr", 2, vec![100], decision(0, "x")).await,
        Err(Error::RolloutChanged { expected: 0, found: 1, .. })
    ));
    let paused =
        registry.act_on_rollout("ctr", Action::Pause, decision(started.seq, "too little traffic")).await.unwrap();
    assert_eq!(paused.status, Status::Paused);
    // Two deciders on the same state: the second loses.
    let stale = registry.act_on_rollout("ctr", Action::Resume, decision(started.seq, "late")).await;
    assert!(matches!(stale, Err(Error::RolloutChanged { expected: 1, found: 2, .. })), "{stale:?}");
    assert!(matches!(
        registry.act_on_rollout("ctr", Action::Advance, decision(paused.seq, "x")).await,
        Err(Error::Rollout(_))
    ));
    let rolled = registry.act_on_rollout("ctr", Action::RollBack, decision(paused.seq, "ctr fell")).await.unwrap();
    assert_eq!((rolled.status, rolled.weight()), (Status::RolledBack, 0));
    assert_eq!(registry.state("ctr").await.unwrap().aliases[PRODUCTION], 1);
    // Plans are checked; so are the versions.
    for bad in [vec![], vec![0, 50], vec![50, 25, 100], vec![0, 120]] {
        assert!(matches!(
            registry.start_rollout("ctr", 2, bad, decision(rolled.seq, "x")).await,
            Err(Error::Rollout(_))
        ));
    }
    assert!(registry.start_rollout("ctr", 9, vec![100], decision(rolled.seq, "x")).await.is_err());
    assert!(matches!(
        registry.start_rollout("ctr", 1, vec![100], decision(rolled.seq, "x")).await,
        Err(Error::Rollout(_))
    ));
}

#[test]
fn the_split_is_sticky_proportional_and_only_moves_users_to_the_candidate() {
    let rollout = |weight: u8| Rollout {
        seq: 1,
        id: 1,
        production: 1,
        candidate: 2,
        salt: "ctr-rollout-1".into(),
        plan: vec![weight, 100],
        step: 0,
        step_started_ms: 0,
        status: Status::Running,
        changed_at_ms: 0,
        changed_by: String::new(),
        change: String::new(),
        reason: String::new(),
        figures: BTreeMap::new(),
    };
    let users: Vec<String> = (0..100_000).map(|u| format!("u-{u}")).collect();
    let mut previous: Option<Vec<Arm>> = None;
    for weight in [0u8, 5, 25, 50, 100] {
        let split = rollout(weight);
        let arms: Vec<Arm> = users.iter().map(|u| split.arm(u)).collect();
        // Another replica computes the same arms from the same document.
        assert_eq!(arms, users.iter().map(|u| rollout(weight).arm(u)).collect::<Vec<_>>());
        let share = arms.iter().filter(|a| **a == Arm::Candidate).count() as f64 / users.len() as f64;
        assert!((share - f64::from(weight) / 100.0).abs() < 0.005, "weight {weight}%: share {share}");
        if let Some(before) = &previous {
            let moved_back = before.iter().zip(&arms).filter(|(b, a)| **b == Arm::Candidate && **a == Arm::Production);
            assert_eq!(moved_back.count(), 0, "raising the weight to {weight}% moved a user back");
        }
        previous = Some(arms);
    }
    // Another salt splits users independently: about 5% of one 5% arm is in the other's.
    let other = Rollout { salt: "ctr-rollout-2".into(), ..rollout(5) };
    let both = users.iter().filter(|u| rollout(5).arm(u) == Arm::Candidate && other.arm(u) == Arm::Candidate).count();
    assert!((100..=400).contains(&both), "{both} users in both 5% arms (independent: ~250)");
}
