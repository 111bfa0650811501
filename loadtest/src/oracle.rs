//! Oracle metrics: how well the true click probabilities themselves predict the clicks that
//! happened. No model can beat them on average; they are the physical limit that model metrics
//! are compared against.

use std::collections::HashSet;

use adrank_contracts::{
    eval::{Quality, quality},
    events::{Click, Impression},
};

use crate::world::{Served, Truth, truth::EntityTerms};

/// Why oracle metrics cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OracleError {
    #[error("no impressions to measure")]
    Empty,
    #[error("impression {0} has no oracle_p: oracle metrics need events from the synthetic world")]
    NoOracle(String),
}

/// Log loss, AUC and normalised entropy of `oracle_p` against the clicks observed (an
/// impression counts as clicked when any click names it).
pub fn oracle_quality(impressions: &[Impression], clicks: &[Click]) -> Result<Quality, OracleError> {
    let clicked: HashSet<&str> = clicks.iter().map(|c| c.impression_id.as_str()).collect();
    let pairs = impressions
        .iter()
        .map(|i| {
            let p = i.oracle_p.ok_or_else(|| OracleError::NoOracle(i.impression_id.clone()))?;
            Ok((p, clicked.contains(i.impression_id.as_str())))
        })
        .collect::<Result<Vec<_>, OracleError>>()?;
    quality(&pairs).ok_or(OracleError::Empty)
}

/// What a predictor that knows the truth except some entity-specific terms reaches: the limit
/// of any model that cannot learn those terms from the data it has.
#[derive(Debug, Clone)]
pub struct Ablation {
    /// What is removed: `nothing` (the oracle), `user-ad dot product`, …
    pub without: &'static str,
    pub quality: Quality,
}

/// Each impression of `served` as (its logit's entity terms under `truth`, clicked): call it
/// right after serving, while the truth is the one that decided the clicks.
pub fn ablation_rows(truth: &Truth, served: &Served) -> Vec<(EntityTerms, bool)> {
    served
        .impressions
        .iter()
        .zip(&served.situations)
        .map(|(impression, situation)| {
            let clicked = served.clicks.iter().any(|c| c.impression_id == impression.impression_id);
            (truth.entity_terms(situation), clicked)
        })
        .collect()
}

/// The truth's quality with entity terms removed one group at a time. Each ablated predictor is
/// `sigmoid(logit - removed + c)`, with the shift `c` that minimises its log loss (the best
/// calibration a model without those terms could have).
pub fn ablations(rows: &[(EntityTerms, bool)]) -> Vec<Ablation> {
    type Removed = fn(&EntityTerms) -> f64;
    let groups: [(&'static str, Removed); 7] = [
        ("nothing (the oracle)", |_| 0.0),
        ("users' individual taste", |t| t.user_individual),
        ("users' and ads' individual taste (the learnable ceiling)", |t| t.user_individual + t.ad_individual),
        ("user-ad dot product", |t| t.dot),
        ("user bias and dot product", |t| t.user_bias + t.dot),
        ("ad bias and dot product", |t| t.ad_bias + t.dot),
        ("every entity term", |t| t.user_bias + t.ad_bias + t.advertiser_bias + t.dot),
    ];
    groups
        .into_iter()
        .filter_map(|(without, removed)| {
            let measure = |shift: f64| {
                let pairs: Vec<(f64, bool)> =
                    rows.iter().map(|(t, y)| (sigmoid(t.logit - removed(t) + shift), *y)).collect();
                quality(&pairs)
            };
            // Log loss is convex in the shift: a golden-section search finds its minimum.
            let (mut lo, mut hi) = (-3.0f64, 3.0f64);
            let ratio = (5f64.sqrt() - 1.0) / 2.0;
            for _ in 0..40 {
                let (a, b) = (hi - ratio * (hi - lo), lo + ratio * (hi - lo));
                if measure(a)?.log_loss < measure(b)?.log_loss { hi = b } else { lo = a }
            }
            Some(Ablation { without, quality: measure((lo + hi) / 2.0)? })
        })
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{World, WorldConfig};

    #[test]
    fn removing_entity_terms_costs_quality() {
        let mut world = World::new(WorldConfig { users: 2_000, advertisers: 100, ads: 500, ..WorldConfig::default() });
        let mut rows = Vec::new();
        for _ in 0..5_000 {
            let served = world.serve_baseline();
            rows.extend(ablation_rows(world.truth(), &served));
        }
        let results = ablations(&rows);
        let ne: Vec<f64> = results.iter().map(|a| a.quality.normalised_entropy).collect();
        assert_eq!(results.len(), 7);
        // The oracle, then without users' own taste, then the learnable ceiling (without ads' own
        // taste too), then less and less of the truth.
        assert!(ne[0] < ne[1] && ne[1] < ne[2] && ne[3] < ne[4] && ne[4] < ne[6], "{ne:?}");
        // Most taste is shared by default: users' own taste is worth less than the whole dot
        // product (the ceiling also lacks ads' own biases, so it may lose more).
        assert!(ne[1] < ne[3], "{ne:?}");
        // The recalibrated oracle is the oracle: the world's truth is calibrated already.
        let plain = quality(&rows.iter().map(|(t, y)| (sigmoid(t.logit), *y)).collect::<Vec<_>>()).unwrap();
        assert!((plain.log_loss - results[0].quality.log_loss).abs() < 2e-4, "{plain:?} vs {:?}", results[0]);
    }
}
