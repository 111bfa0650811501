//! The rollout controller: judges a running rollout's arms from the outcomes the ingester
//! counted in the training log, and advances, pauses, promotes or rolls it back in the registry.
//!
//! - [`config`]: the `[rollout]` section.
//! - [`analysis`]: the verdict on the arms (always-valid confidence sequences).
//! - [`replicas`]: each arm's requests, errors and answer times, read from the serving
//!   replicas' `/metrics`.
//! - [`metrics`]: what the controller exports: the rollout's standing, its looks, the arms.
//! - [`controller`]: one look at a rollout and the decision it leads to.

pub mod analysis;
pub mod config;
pub mod controller;
pub mod metrics;
pub mod replicas;

pub use analysis::{Analysis, Verdict, analyse};
pub use config::RolloutConfig;
pub use controller::{Controller, Look};
