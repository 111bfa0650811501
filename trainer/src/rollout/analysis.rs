//! The verdict on a rollout's arms: online CTR (non-inferiority within a margin) and the
//! candidate's calibration, from always-valid confidence sequences.
//!
//! The controller looks at the figures every interval for as long as a step lasts. A fixed-sample
//! test looked at that often fails good candidates far more often than its level says; a
//! confidence sequence holds at every look at once (the mixture sequential probability ratio test
//! of Robbins, as used by Johari et al., "Always valid inference", 2017). For an estimate with
//! variance `V`, mixing over effects with a normal of width `tau`, the interval
//!
//! ```text
//! estimate ± sqrt( V (V + tau²) / tau² · (2 ln(1/alpha) + ln((V + tau²) / V)) )
//! ```
//!
//! covers the truth at every sample size with probability at least `1 - alpha`.
//!
//! CTR: the candidate arm passes once the interval of `ctr(candidate) - ctr(production)` lies
//! above `-margin x ctr(production)` and fails once it lies below; in between, or before both arms
//! have the minimum impressions and clicks, it is inconclusive. Calibration (predicted over
//! observed clicks) only fails: when the interval of the candidate's observed CTR puts the ratio
//! wholly outside the band. Each check spends half of `alpha`. At the shadow step the candidate
//! serves no one: it is judged on its calibration over the production impressions it also scored
//! ([`analyse_shadow`]), with all of `alpha`.
//!
//! Counted per impression, clicks of one user are not independent (a user stays in one arm), so
//! the variance is somewhat understated when users see many impressions: docs/rollouts.md.

use std::collections::BTreeMap;

use adrank_contracts::{arm_requests::ArmRequests, training_log::Outcomes};

use super::RolloutConfig;

/// What the figures say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The candidate is not worse than the margin: it may advance.
    Passed,
    /// The candidate is shown worse: roll back.
    Failed,
    /// Too little data, or the interval still straddles the margin.
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Inconclusive => "inconclusive",
        }
    }
}

/// A verdict with its reasons and every figure it rested on.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    pub figures: BTreeMap<String, f64>,
}

/// An always-valid interval around `estimate`, whose variance is `variance`, mixing over effects
/// of width `tau`.
pub fn confidence_sequence(estimate: f64, variance: f64, tau: f64, alpha: f64) -> (f64, f64) {
    let (v, t2) = (variance.max(f64::MIN_POSITIVE), (tau * tau).max(f64::MIN_POSITIVE));
    let radius = (v * (v + t2) / t2 * (2.0 * (1.0 / alpha).ln() + ((v + t2) / v).ln())).sqrt();
    (estimate - radius, estimate + radius)
}

/// The clicked share, with the variance of that share.
fn rate(arm: &Outcomes) -> (f64, f64) {
    share(arm.clicked, arm.impressions)
}

/// The share `k / n`, with its variance.
fn share(k: u64, n: u64) -> (f64, f64) {
    if n < 2 {
        return (0.0, 0.25);
    }
    let n = n as f64;
    let p = k as f64 / n;
    // A share of none (or all) yet must not look certain: at least one of each.
    let q = p.clamp(1.0 / n, 1.0 - 1.0 / n);
    (p, q * (1.0 - q) / n)
}

/// Judges the candidate arm against the production arm.
pub fn analyse(production: &Outcomes, candidate: &Outcomes, config: &RolloutConfig) -> Analysis {
    let mut figures = BTreeMap::new();
    let mut reasons = Vec::new();
    for (name, arm) in [("production", production), ("candidate", candidate)] {
        figures.insert(format!("{name}_impressions"), arm.impressions as f64);
        figures.insert(format!("{name}_clicked"), arm.clicked as f64);
        figures.insert(format!("{name}_ctr"), rate(arm).0);
        if arm.clicked > 0 {
            figures.insert(format!("{name}_calibration"), arm.predicted() / arm.clicked as f64);
        }
        if arm.with_truth > 0 {
            figures.insert(format!("{name}_true_ctr"), arm.truth() / arm.with_truth as f64);
        }
    }
    let thin: Vec<String> = [("production", production), ("candidate", candidate)]
        .into_iter()
        .filter(|(_, arm)| arm.impressions < config.min_impressions || arm.clicked < config.min_clicks)
        .map(|(name, arm)| {
            format!(
                "{name} arm has {} impressions and {} clicks of the {} and {} needed",
                arm.impressions, arm.clicked, config.min_impressions, config.min_clicks
            )
        })
        .collect();
    if !thin.is_empty() {
        return Analysis { verdict: Verdict::Inconclusive, reasons: thin, figures };
    }
    let alpha = config.alpha / 2.0;

    let ((p_prod, v_prod), (p_cand, v_cand)) = (rate(production), rate(candidate));
    let (low, high) = confidence_sequence(p_cand - p_prod, v_prod + v_cand, config.effect * p_prod, alpha);
    let bound = -config.ctr_margin * p_prod;
    figures.extend([("ctr_difference_low".into(), low), ("ctr_difference_high".into(), high)]);
    figures.insert("ctr_margin".into(), bound);
    let relative = |x: f64| 100.0 * x / p_prod;
    let ctr = if high < bound {
        reasons.push(format!(
            "CTR: the candidate's is {:+.1}% to {:+.1}% against production's, below the {:.1}% tolerated",
            relative(low),
            relative(high),
            -100.0 * config.ctr_margin
        ));
        Verdict::Failed
    } else if low > bound {
        reasons.push(format!(
            "CTR: the candidate's is {:+.1}% to {:+.1}% against production's, within the {:.1}% tolerated",
            relative(low),
            relative(high),
            -100.0 * config.ctr_margin
        ));
        Verdict::Passed
    } else {
        reasons.push(format!(
            "CTR: the candidate's is {:+.1}% to {:+.1}% against production's, not yet decided against {:.1}%",
            relative(low),
            relative(high),
            -100.0 * config.ctr_margin
        ));
        Verdict::Inconclusive
    };

    let predicted = candidate.predicted() / candidate.impressions as f64;
    let miscalibrated =
        calibration(predicted, (p_cand, v_cand), config, config.alpha / 4.0, &mut figures, &mut reasons);
    let verdict = if miscalibrated { Verdict::Failed } else { ctr };
    Analysis { verdict, reasons, figures }
}

/// Judges a shadowed candidate on the production impressions it also scored: its calibration
/// there (it served none, so there is no CTR of its own to compare).
pub fn analyse_shadow(production: &Outcomes, config: &RolloutConfig) -> Analysis {
    let mut figures = BTreeMap::from([
        ("shadowed_impressions".to_string(), production.shadowed as f64),
        ("shadowed_clicked".to_string(), production.shadow_clicked as f64),
    ]);
    if production.shadowed < config.min_impressions || production.shadow_clicked < config.min_clicks {
        let reason = format!(
            "the candidate shadowed {} impressions with {} clicks of the {} and {} needed",
            production.shadowed, production.shadow_clicked, config.min_impressions, config.min_clicks
        );
        return Analysis { verdict: Verdict::Inconclusive, reasons: vec![reason], figures };
    }
    let shadowed =
        Outcomes { impressions: production.shadowed, clicked: production.shadow_clicked, ..Outcomes::default() };
    let predicted = production.shadow_predicted() / production.shadowed as f64;
    let mut reasons = Vec::new();
    let miscalibrated = calibration(predicted, rate(&shadowed), config, config.alpha, &mut figures, &mut reasons);
    if miscalibrated {
        return Analysis { verdict: Verdict::Failed, reasons, figures };
    }
    let (low, high) = (figures["candidate_calibration_low"], figures["candidate_calibration_high"]);
    reasons.push(format!(
        "calibration: on production's traffic the candidate predicts {low:.2} to {high:.2} times the clicks"
    ));
    Analysis { verdict: Verdict::Passed, reasons, figures }
}

/// Judges the candidate's errors and answer times at its step against production's over the
/// rollout, from the replicas' counts; `unanswered` names replicas that could not be read.
pub fn analyse_requests(
    production: &ArmRequests,
    candidate: &ArmRequests,
    unanswered: &[String],
    config: &RolloutConfig,
) -> Analysis {
    let mut figures = BTreeMap::new();
    for (name, arm) in [("production", production), ("candidate", candidate)] {
        figures.insert(format!("{name}_requests"), arm.requests as f64);
        figures.insert(format!("{name}_errors"), arm.errors as f64);
        if let Some(p99) = arm.quantile(0.99) {
            figures.insert(format!("{name}_p99_ms"), 1000.0 * p99);
        }
    }
    let mut reasons: Vec<String> =
        unanswered.iter().map(|why| format!("errors and latency: a replica was not read: {why}")).collect();
    let thin: Vec<String> = [("production", production), ("candidate", candidate)]
        .into_iter()
        .filter(|(_, arm)| arm.requests < config.min_requests)
        .map(|(name, arm)| {
            format!(
                "errors and latency: {name} arm has {} requests of the {} needed",
                arm.requests, config.min_requests
            )
        })
        .collect();
    if !thin.is_empty() {
        reasons.extend(thin);
        return Analysis { verdict: Verdict::Inconclusive, reasons, figures };
    }
    let alpha = config.alpha / 8.0;

    // Errors: the candidate's 5xx share against production's plus the margin.
    let ((p_prod, v_prod), (p_cand, v_cand)) =
        (share(production.errors, production.requests), share(candidate.errors, candidate.requests));
    let tau = config.error_margin.max(0.001);
    let (low, high) = confidence_sequence(p_cand - p_prod, v_prod + v_cand, tau, alpha);
    figures.extend([("error_difference_low".into(), low), ("error_difference_high".into(), high)]);
    let mut failed = false;
    if low > config.error_margin {
        failed = true;
        reasons.push(format!(
            "errors: the candidate fails {:.2}% of requests, production {:.2}%: {:+.2} to {:+.2} points, above the {:.2} tolerated",
            100.0 * p_cand,
            100.0 * p_prod,
            100.0 * low,
            100.0 * high,
            100.0 * config.error_margin
        ));
    }

    // Latency: the candidate's share of answers slower than the threshold; its p99 is above the
    // threshold exactly when that share is above 1%.
    if let (Some(p99), true) = (production.quantile(0.99), candidate.ok() >= 2) {
        let threshold = (p99 * config.latency_ratio).max(p99 + config.latency_slack_ms / 1000.0);
        if let Some((bound, slower)) = candidate.slower_than(threshold) {
            let (tail, variance) = share(slower, candidate.ok());
            let (low, high) = confidence_sequence(tail, variance, 0.01, alpha);
            figures.extend([
                ("latency_threshold_ms".into(), 1000.0 * bound),
                ("candidate_slower_share_low".into(), low),
                ("candidate_slower_share_high".into(), high),
            ]);
            if low > 0.01 {
                failed = true;
                reasons.push(format!(
                    "latency: {:.1}% to {:.1}% of the candidate's answers take longer than {:.1} ms (production's p99 {:.1} ms): its p99 is above it",
                    100.0 * low,
                    100.0 * high,
                    1000.0 * bound,
                    1000.0 * p99
                ));
            }
        }
    }
    if failed {
        return Analysis { verdict: Verdict::Failed, reasons, figures };
    }
    if !unanswered.is_empty() {
        return Analysis { verdict: Verdict::Inconclusive, reasons, figures };
    }
    let p99 = |name: &str| figures.get(&format!("{name}_p99_ms")).map_or("-".into(), |ms| format!("{ms:.1} ms"));
    reasons.push(format!(
        "errors and latency: the candidate fails {:.2}% (production {:.2}%), p99 {} (production {})",
        100.0 * p_cand,
        100.0 * p_prod,
        p99("candidate"),
        p99("production")
    ));
    Analysis { verdict: Verdict::Passed, reasons, figures }
}

impl Analysis {
    /// Both analyses as one: failed when either failed, passed when both passed.
    pub fn and(mut self, other: Analysis) -> Analysis {
        self.verdict = match (self.verdict, other.verdict) {
            (Verdict::Failed, _) | (_, Verdict::Failed) => Verdict::Failed,
            (Verdict::Passed, Verdict::Passed) => Verdict::Passed,
            _ => Verdict::Inconclusive,
        };
        self.reasons.extend(other.reasons);
        self.figures.extend(other.figures);
        self
    }
}

/// Whether the candidate's predicted over observed clicks is shown outside the band, from the
/// interval of the observed rate `(p, variance)` against the mean prediction; records the
/// interval in `figures`, and the reason when it is.
fn calibration(
    predicted: f64,
    (p, v): (f64, f64),
    config: &RolloutConfig,
    alpha: f64,
    figures: &mut BTreeMap<String, f64>,
    reasons: &mut Vec<String>,
) -> bool {
    let (observed_low, observed_high) = confidence_sequence(p, v, config.effect * p.max(f64::MIN_POSITIVE), alpha);
    let (low, high) = (predicted / observed_high, predicted / observed_low.max(f64::MIN_POSITIVE));
    figures.extend([("candidate_calibration_low".into(), low), ("candidate_calibration_high".into(), high)]);
    let outside = low > config.calibration_max || high < config.calibration_min;
    if outside {
        reasons.push(format!(
            "calibration: the candidate predicts {low:.2} to {high:.2} times the clicks it gets, outside {:.2} to {:.2}",
            config.calibration_min, config.calibration_max
        ));
    }
    outside
}

#[cfg(test)]
mod tests;
