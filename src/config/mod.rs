//! The whole `adrank.toml`: one section per component, each owned by the crate it configures.
//!
//! [`load`] reads the file, applies `ADRANK_…` environment overrides and checks everything,
//! reporting every problem at once ([`report`]).

mod env;
mod load;
pub(crate) mod report;

use adrank_contracts::ConfigProblem;
use adrank_featurestore::{IngestConfig, KafkaConfig, RedisConfig};
use adrank_loadtest::world::WorldConfig;
use adrank_registry::{OrtConfig, RegistryConfig};
use adrank_serving::ServingConfig;
use adrank_trainer::{TrainingConfig, retrain::RetrainConfig, rollout::RolloutConfig};
use serde::{Deserialize, Serialize};

pub(crate) use load::{Loaded, load};

use crate::stack::StackConfig;

/// Every knob of adrank. Each section has defaults that run on one machine, so a file only needs
/// the keys it changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdrankConfig {
    pub(crate) kafka: KafkaConfig,
    pub(crate) redis: RedisConfig,
    pub(crate) ingest: IngestConfig,
    pub(crate) registry: RegistryConfig,
    pub(crate) onnxruntime: OrtConfig,
    pub(crate) serving: ServingConfig,
    pub(crate) training: TrainingConfig,
    pub(crate) retrain: RetrainConfig,
    pub(crate) rollout: RolloutConfig,
    pub(crate) stack: StackConfig,
    pub(crate) world: WorldConfig,
}

impl AdrankConfig {
    /// Every cross-field and value problem, keyed by the full dotted key.
    pub(crate) fn problems(&self) -> Vec<ConfigProblem> {
        let sections: [(&str, Vec<ConfigProblem>); 11] = [
            ("kafka", self.kafka.problems()),
            ("redis", self.redis.problems()),
            ("ingest", self.ingest.problems()),
            ("registry", self.registry.problems()),
            ("onnxruntime", self.onnxruntime.problems()),
            ("serving", self.serving.problems()),
            ("training", self.training.problems()),
            ("retrain", self.retrain.problems()),
            ("rollout", self.rollout.problems()),
            ("stack", self.stack.problems()),
            ("world", self.world.problems()),
        ];
        sections
            .into_iter()
            .flat_map(|(section, problems)| {
                problems.into_iter().map(move |p| ConfigProblem::new(format!("{section}.{}", p.key), p.problem))
            })
            .collect()
    }
}
