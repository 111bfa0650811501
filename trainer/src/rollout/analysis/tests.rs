use super::*;
use crate::rng::Rng;

/// An arm of `impressions` with `clicked` clicks, predicted `calibration` times the clicks.
fn arm(impressions: u64, clicked: u64, calibration: f64) -> Outcomes {
    Outcomes {
        impressions,
        clicked,
        predicted_micros: (clicked as f64 * calibration * 1e6) as u64,
        ..Outcomes::default()
    }
}

/// Draws `n` impressions of click probability `p`: the clicks.
fn draw(rng: &mut Rng, n: u64, p: f64) -> u64 {
    (0..n).map(|_| u64::from(rng.f64() < p)).sum()
}

/// How many of `runs` simulated rollouts reach each verdict at some look (both arms growing by
/// `per_look` impressions for `looks` looks), judging with `judge`.
fn simulate(
    runs: usize,
    looks: usize,
    per_look: u64,
    (p_production, p_candidate): (f64, f64),
    judge: impl Fn(&Outcomes, &Outcomes) -> Verdict,
) -> (usize, usize) {
    let mut rng = Rng::new(17);
    let (mut passed, mut failed) = (0, 0);
    for _ in 0..runs {
        let (mut production, mut candidate) = (arm(0, 0, 1.0), arm(0, 0, 1.0));
        for _ in 0..looks {
            for (outcomes, p) in [(&mut production, p_production), (&mut candidate, p_candidate)] {
                let clicks = draw(&mut rng, per_look, p);
                outcomes.add(&arm(per_look, clicks, 1.0));
            }
            match judge(&production, &candidate) {
                Verdict::Passed => {
                    passed += 1;
                    break;
                }
                Verdict::Failed => {
                    failed += 1;
                    break;
                }
                Verdict::Inconclusive => {}
            }
        }
    }
    (passed, failed)
}

fn config() -> RolloutConfig {
    RolloutConfig { min_impressions: 1_000, min_clicks: 20, ..RolloutConfig::default() }
}

/// The same check with a fixed-sample 95% interval, looked at as often.
fn naive(production: &Outcomes, candidate: &Outcomes, margin: f64) -> Verdict {
    let ((pp, vp), (pc, vc)) = (rate(production), rate(candidate));
    let radius = 1.96 * (vp + vc).sqrt();
    let bound = -margin * pp;
    if pc - pp - radius > bound { Verdict::Passed } else { Verdict::Inconclusive }
}

#[test]
fn repeated_looks_do_not_pass_a_candidate_at_the_margin_more_often_than_alpha() {
    // The candidate loses exactly the tolerated 3%: a pass is a false alarm. 200 rollouts, 60
    // looks each: the confidence sequence passes at most alpha / 2 of them (2.5%: 5 of 200;
    // a little more is sampling noise), the fixed interval looked at as often many more.
    let config = config();
    let p = 0.05;
    let at_margin = (p, p * (1.0 - config.ctr_margin));
    let (passed, _) = simulate(200, 60, 1_000, at_margin, |a, b| analyse(a, b, &config).verdict);
    let (naive_passed, _) = simulate(200, 60, 1_000, at_margin, |a, b| naive(a, b, config.ctr_margin));
    assert!(passed <= 9, "the sequence passed {passed} of 200 at the margin");
    assert!(naive_passed >= 2 * passed.max(6), "the fixed interval passed {naive_passed} of 200");
}

#[test]
fn an_equal_candidate_is_rarely_failed_and_a_clearly_worse_one_always_is() {
    let config = config();
    let (_, failed) = simulate(200, 60, 1_000, (0.05, 0.05), |a, b| analyse(a, b, &config).verdict);
    assert!(failed <= 5, "an equal candidate failed {failed} of 200 times");
    // 30% fewer clicks (a model ranking by bid alone): every rollout catches it.
    let (passed, failed) = simulate(50, 60, 1_000, (0.05, 0.035), |a, b| analyse(a, b, &config).verdict);
    assert_eq!((passed, failed), (0, 50));
    // 20% more clicks: passed, never failed.
    let (passed, failed) = simulate(50, 60, 1_000, (0.05, 0.06), |a, b| analyse(a, b, &config).verdict);
    assert_eq!((passed, failed), (50, 0));
}

#[test]
fn thin_arms_are_inconclusive_whatever_they_show() {
    let config = config();
    // The candidate looks far worse, but has 15 clicks of the 20 needed.
    let analysis = analyse(&arm(5_000, 250, 1.0), &arm(1_500, 15, 1.0), &config);
    assert_eq!(analysis.verdict, Verdict::Inconclusive);
    assert!(analysis.reasons[0].contains("candidate arm has 1500 impressions and 15 clicks"), "{:?}", analysis.reasons);
    assert_eq!(analysis.figures["candidate_ctr"], 0.01);
}

#[test]
fn a_candidate_predicting_twice_its_clicks_fails_on_calibration_alone() {
    let config = config();
    // 30% more clicks than production, and predicted within 5%: passed.
    let good = analyse(&arm(20_000, 1_000, 1.0), &arm(20_000, 1_300, 1.05), &config);
    assert_eq!(good.verdict, Verdict::Passed, "{:?}", good.reasons);
    // The same clicks, predicted twice over: failed.
    let overconfident = analyse(&arm(20_000, 1_000, 1.0), &arm(20_000, 1_300, 2.0), &config);
    assert_eq!(overconfident.verdict, Verdict::Failed);
    assert!(overconfident.reasons.iter().any(|r| r.starts_with("calibration")), "{:?}", overconfident.reasons);
}

#[test]
fn the_interval_narrows_with_data_and_widens_with_confidence() {
    let (low, high) = confidence_sequence(0.0, 1e-4, 0.005, 0.05);
    let (low_more, high_more) = confidence_sequence(0.0, 1e-5, 0.005, 0.05);
    let (low_sure, high_sure) = confidence_sequence(0.0, 1e-4, 0.005, 0.01);
    assert!(high_more - low_more < high - low);
    assert!(high_sure - low_sure > high - low);
    // Wider than the fixed-sample interval: the price of looking at any time.
    assert!(high > 1.96 * 1e-2);
}

/// `n` requests, each failing with probability `errors`, the rest answered in a log-normal
/// time of median `median_ms`.
fn requests(rng: &mut Rng, n: u64, errors: f64, median_ms: f64) -> ArmRequests {
    let bounds = adrank_contracts::arm_requests::buckets();
    let mut counts = vec![0u64; bounds.len() + 1];
    let mut failed = 0;
    for _ in 0..n {
        if rng.f64() < errors {
            failed += 1;
            continue;
        }
        let z = (-2.0 * rng.f64().max(1e-12).ln()).sqrt() * (std::f64::consts::TAU * rng.f64()).cos();
        let seconds = median_ms / 1000.0 * (0.4 * z).exp();
        counts[bounds.partition_point(|&b| b < seconds)] += 1;
    }
    let mut cumulative = 0;
    let ok_buckets = bounds
        .iter()
        .chain([f64::INFINITY].iter())
        .zip(&counts)
        .map(|(&bound, &count)| {
            cumulative += count;
            (bound, cumulative)
        })
        .collect();
    ArmRequests { requests: n, errors: failed, ok_buckets }
}

/// How many of `runs` rollouts fail at some look of `looks`, each adding `per_look` requests to
/// both arms: production (errors, median ms) against the candidate's.
fn simulate_requests(runs: usize, looks: usize, per_look: u64, production: (f64, f64), candidate: (f64, f64)) -> usize {
    let (mut rng, config) = (Rng::new(23), RolloutConfig::default());
    let mut failed = 0;
    for _ in 0..runs {
        let (mut prod, mut cand) = (ArmRequests::default(), ArmRequests::default());
        for _ in 0..looks {
            prod.add(&requests(&mut rng, per_look, production.0, production.1));
            cand.add(&requests(&mut rng, per_look, candidate.0, candidate.1));
            if analyse_requests(&prod, &cand, &[], &config).verdict == Verdict::Failed {
                failed += 1;
                break;
            }
        }
    }
    failed
}

#[test]
fn an_equal_candidate_keeps_its_errors_and_latency_and_a_slow_or_failing_one_is_caught() {
    // Equal arms, 0.2% errors and 4 ms, looked at 30 times: failed at most alpha / 4 of the time.
    let failed = simulate_requests(100, 30, 500, (0.002, 4.0), (0.002, 4.0));
    assert!(failed <= 3, "an equal candidate failed {failed} of 100 times");
    // Twice production's answer time, or 3% of requests failing: caught every time.
    assert_eq!(simulate_requests(20, 30, 500, (0.002, 4.0), (0.002, 8.0)), 20);
    assert_eq!(simulate_requests(20, 30, 500, (0.002, 4.0), (0.03, 4.0)), 20);
    // 1 ms slower is within the 5 ms slack.
    assert_eq!(simulate_requests(20, 30, 500, (0.002, 4.0), (0.002, 5.0)), 0);
}

#[test]
fn requests_below_the_minimum_or_a_replica_unread_decide_nothing_but_a_failure() {
    let (mut rng, config) = (Rng::new(5), RolloutConfig::default());
    let production = requests(&mut rng, 5_000, 0.0, 4.0);
    // Every request of the candidate failed, but it has 200 of the 500 needed.
    let thin = analyse_requests(&production, &requests(&mut rng, 200, 1.0, 4.0), &[], &config);
    assert_eq!(thin.verdict, Verdict::Inconclusive);
    assert!(thin.reasons.iter().any(|r| r.contains("candidate arm has 200 requests of the 500")), "{:?}", thin.reasons);
    // Enough requests and a clean record, but one replica was not read: its errors are unseen.
    let unread = vec!["http://10.0.0.2:8080/metrics: cannot connect".to_string()];
    let good = requests(&mut rng, 5_000, 0.0, 4.0);
    let analysis = analyse_requests(&production, &good, &unread, &config);
    assert_eq!(analysis.verdict, Verdict::Inconclusive);
    assert!(analysis.reasons[0].contains("10.0.0.2:8080"), "{:?}", analysis.reasons);
    assert_eq!(analyse_requests(&production, &good, &[], &config).verdict, Verdict::Passed);
    // What the replicas that answered show is enough to fail.
    let failing = requests(&mut rng, 5_000, 0.5, 4.0);
    let analysis = analyse_requests(&production, &failing, &unread, &config);
    assert_eq!(analysis.verdict, Verdict::Failed);
    assert!(analysis.reasons.iter().any(|r| r.starts_with("errors: the candidate fails 5")), "{:?}", analysis.reasons);
}

#[test]
fn analyses_combine_failed_first_then_inconclusive() {
    let with = |verdict| Analysis { verdict, reasons: vec![verdict.as_str().into()], figures: BTreeMap::new() };
    let (p, f, i) = (Verdict::Passed, Verdict::Failed, Verdict::Inconclusive);
    for (a, b, both) in [(p, p, p), (p, i, i), (i, p, i), (i, f, f), (f, p, f), (i, i, i)] {
        let combined = with(a).and(with(b));
        assert_eq!(combined.verdict, both, "{a:?} and {b:?}");
        assert_eq!(combined.reasons, [a.as_str(), b.as_str()]);
    }
}
