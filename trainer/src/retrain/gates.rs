//! Judging a candidate by its evaluation report: every gate's figure, threshold and outcome,
//! and one decision.

use serde::{Deserialize, Serialize};

use super::GatesConfig;
use crate::evaluate::{EvalReport, Metrics, ModelResult};

/// What the gates decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Every gate passed: the candidate may go on (to the rollout, or to production).
    Blessed,
    /// A gate failed.
    Refused,
    /// Too little evidence to judge: neither a pass nor a fail.
    Inconclusive,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Blessed => "blessed",
            Self::Refused => "refused",
            Self::Inconclusive => "inconclusive",
        })
    }
}

/// One gate's check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The gate, for example `auc` or `slice ne: device=mobile`.
    pub gate: String,
    pub value: f64,
    /// The rule the value had to meet, as text (`>= 0.6`).
    pub rule: String,
    pub passed: bool,
}

/// The decision, every figure and the reasons, as stored with the version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub decision: Decision,
    /// The failed checks and missing evidence, as sentences (empty when blessed).
    pub reasons: Vec<String>,
    pub checks: Vec<Check>,
    /// Whether there was a production version to compare with.
    pub against_production: Option<u64>,
}

/// Judges the report's `candidate` row (and its `baseline` row: production, when present).
pub fn judge(report: &EvalReport, gates: &GatesConfig) -> Verdict {
    let row = |role: &str| report.rows.iter().find(|r| r.role == role);
    let candidate = row("candidate").expect("an evaluation report has a candidate row; this is a bug");
    let production = row("baseline");
    let mut checks = Vec::new();
    let mut reasons = Vec::new();
    if report.examples < gates.min_examples || report.clicks < gates.min_clicks {
        reasons.push(format!(
            "too little evidence: {} examples and {} clicks in the evaluation window; the gates need {} and {}",
            report.examples, report.clicks, gates.min_examples, gates.min_clicks
        ));
        return Verdict {
            decision: Decision::Inconclusive,
            reasons,
            checks,
            against_production: production.and_then(|p| p.version),
        };
    }
    let c = &candidate.overall;
    let mut check = |gate: String, value: f64, rule: String, passed: bool| {
        checks.push(Check { gate, value, rule, passed });
    };
    check("auc".into(), c.auc, format!(">= {}", gates.min_auc), c.auc >= gates.min_auc);
    check(
        "normalised entropy".into(),
        c.normalised_entropy,
        format!("<= {}", gates.max_normalised_entropy),
        c.normalised_entropy <= gates.max_normalised_entropy,
    );
    check(
        "calibration".into(),
        c.calibration,
        format!("in [{}, {}]", gates.calibration_min, gates.calibration_max),
        (gates.calibration_min..=gates.calibration_max).contains(&c.calibration),
    );
    if let Some(p) = production {
        let improvement = 1.0 - c.normalised_entropy / p.overall.normalised_entropy;
        check(
            "ne improvement vs production".into(),
            improvement,
            format!(">= {}", gates.min_ne_improvement),
            improvement >= gates.min_ne_improvement,
        );
        for (slice, regression) in slice_regressions(candidate, p, gates.min_slice_examples) {
            check(
                format!("slice ne vs production: {slice}"),
                regression,
                format!("<= {}", gates.max_slice_regression),
                regression <= gates.max_slice_regression,
            );
        }
    }
    for failed in checks.iter().filter(|c| !c.passed) {
        reasons.push(format!("{} is {:.4}; the gate is {}", failed.gate, failed.value, failed.rule));
    }
    Verdict {
        decision: if reasons.is_empty() { Decision::Blessed } else { Decision::Refused },
        reasons,
        checks,
        against_production: production.and_then(|p| p.version),
    }
}

/// Per slice where both have at least `min_examples`: how much worse the candidate's NE is than
/// production's (`candidate / production - 1`; negative is better).
fn slice_regressions(candidate: &ModelResult, production: &ModelResult, min_examples: u64) -> Vec<(String, f64)> {
    candidate
        .slices
        .iter()
        .filter_map(|(name, c)| {
            let p: &Metrics = production.slices.get(name)?;
            (c.examples >= min_examples && p.examples >= min_examples)
                .then(|| (name.clone(), c.normalised_entropy / p.normalised_entropy - 1.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn metrics(examples: u64, auc: f64, ne: f64, calibration: f64) -> Metrics {
        Metrics {
            examples,
            ctr: 0.02,
            mean_prediction: 0.02 * calibration,
            calibration,
            log_loss: 0.09 * ne,
            auc,
            normalised_entropy: ne,
            gap_to_oracle: None,
        }
    }

    fn result(role: &str, version: Option<u64>, overall: Metrics, slices: &[(&str, Metrics)]) -> ModelResult {
        ModelResult {
            role: role.into(),
            version,
            overall,
            slices: slices.iter().map(|(n, m)| (n.to_string(), *m)).collect::<BTreeMap<_, _>>(),
        }
    }

    fn report(rows: Vec<ModelResult>, examples: u64, clicks: u64) -> EvalReport {
        EvalReport { model: "ctr".into(), window: (0, 1), examples, clicks, rows }
    }

    #[test]
    fn a_better_candidate_is_blessed_and_every_check_is_kept() {
        let report = report(
            vec![
                result(
                    "candidate",
                    Some(2),
                    metrics(50_000, 0.75, 0.85, 1.02),
                    &[("device=mobile", metrics(20_000, 0.74, 0.86, 1.0))],
                ),
                result(
                    "baseline",
                    Some(1),
                    metrics(50_000, 0.73, 0.87, 0.97),
                    &[("device=mobile", metrics(20_000, 0.72, 0.87, 1.0))],
                ),
            ],
            50_000,
            1_000,
        );
        let verdict = judge(&report, &GatesConfig::default());
        assert_eq!(verdict.decision, Decision::Blessed, "{verdict:?}");
        assert!(verdict.reasons.is_empty());
        assert_eq!(verdict.checks.len(), 5, "auc, ne, calibration, improvement, one slice: {:?}", verdict.checks);
        assert_eq!(verdict.against_production, Some(1));
    }

    #[test]
    fn each_failed_gate_is_a_reason() {
        let gates = GatesConfig::default();
        // Worse overall, a slice 5% worse, miscalibrated, weak AUC.
        let report = report(
            vec![
                result(
                    "candidate",
                    Some(2),
                    metrics(50_000, 0.55, 0.90, 1.4),
                    &[("surface=feed", metrics(30_000, 0.5, 0.95, 1.0))],
                ),
                result(
                    "baseline",
                    Some(1),
                    metrics(50_000, 0.73, 0.87, 1.0),
                    &[("surface=feed", metrics(30_000, 0.7, 0.90, 1.0))],
                ),
            ],
            50_000,
            1_000,
        );
        let verdict = judge(&report, &gates);
        assert_eq!(verdict.decision, Decision::Refused);
        let failed: Vec<&str> = verdict.checks.iter().filter(|c| !c.passed).map(|c| c.gate.as_str()).collect();
        assert_eq!(
            failed,
            ["auc", "calibration", "ne improvement vs production", "slice ne vs production: surface=feed"],
            "{verdict:?}"
        );
        assert_eq!(verdict.reasons.len(), 4);
        assert!(verdict.reasons[0].starts_with("auc is 0.5500; the gate is >= 0.6"), "{:?}", verdict.reasons);
    }

    #[test]
    fn thin_slices_are_not_judged_and_thin_windows_are_inconclusive() {
        let gates = GatesConfig::default();
        let thin_slice = report(
            vec![
                result(
                    "candidate",
                    Some(2),
                    metrics(50_000, 0.75, 0.85, 1.0),
                    &[("ad_age<1d", metrics(100, 0.5, 2.0, 1.0))],
                ),
                result(
                    "baseline",
                    Some(1),
                    metrics(50_000, 0.73, 0.87, 1.0),
                    &[("ad_age<1d", metrics(100, 0.7, 0.9, 1.0))],
                ),
            ],
            50_000,
            1_000,
        );
        assert_eq!(judge(&thin_slice, &gates).decision, Decision::Blessed);
        // A perfect-looking candidate on 100 clicks: inconclusive.
        let thin = report(vec![result("candidate", Some(1), metrics(20_000, 0.9, 0.5, 1.0), &[])], 20_000, 100);
        let verdict = judge(&thin, &gates);
        assert_eq!(verdict.decision, Decision::Inconclusive);
        assert!(verdict.reasons[0].contains("100 clicks"), "{:?}", verdict.reasons);
    }

    #[test]
    fn the_first_model_is_judged_by_value_gates_alone() {
        let first = report(vec![result("candidate", Some(1), metrics(50_000, 0.7, 0.9, 1.1), &[])], 50_000, 1_000);
        let verdict = judge(&first, &GatesConfig::default());
        assert_eq!(verdict.decision, Decision::Blessed);
        assert_eq!(verdict.checks.len(), 3);
        assert_eq!(verdict.against_production, None);
    }
}
