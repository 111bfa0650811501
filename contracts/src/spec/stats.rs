//! Transform statistics: constants learned from training data (standardisation), which belong
//! to a model version and travel in its manifest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The learned constants a [`super::Transformer`] needs beyond the spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformStats {
    /// Mean and standard deviation per feature with a `standardise` step, measured on the value
    /// that reaches that step.
    pub standardise: BTreeMap<String, Standardisation>,
}

/// Mean and standard deviation of one feature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standardisation {
    pub mean: f64,
    pub std: f64,
}

/// A running mean and variance (Welford), stable for long streams.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Running {
    count: u64,
    mean: f64,
    m2: f64,
}

impl Running {
    pub(super) fn push(&mut self, x: f64) {
        self.count += 1;
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// The population mean and standard deviation; a constant feature gets std 1 so that it
    /// standardises to 0 instead of dividing by zero.
    pub(super) fn finish(&self) -> Standardisation {
        let variance = if self.count > 0 { self.m2 / self.count as f64 } else { 0.0 };
        let std = variance.sqrt();
        Standardisation { mean: self.mean, std: if std > 1e-12 { std } else { 1.0 } }
    }
}
