//! Oracle metrics: how well the true click probabilities themselves predict the clicks that
//! happened. No model can beat them on average; they are the physical limit that model metrics
//! are compared against.

use std::collections::HashSet;

use adrank_featurestore::{
    eval::{Quality, quality},
    events::{Click, Impression},
};

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
