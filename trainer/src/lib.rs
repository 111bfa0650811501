//! The trainer: datasets, models, optimisers, ONNX export, offline evaluation and the
//! retraining loop.
//!
//! # Layout
//!
//! - [`checkpoint`]: model weights as bytes, for warm starts from a registry version.
//! - [`collective`]: all-gather across ranks: one process, or OpenMPI (`mpirun`).
//! - [`parallel`]: data shards and ranks: who reads what, and one global step from many.
//! - [`config`]: the `[training]` section of `adrank.toml`.
//! - [`data`]: a window of the Parquet training log as shuffled, transformed rows.
//! - [`train`]: the training loop: epochs, validation, early stopping.
//! - [`evaluate`]: candidate vs baseline vs truth on a held-out window, scored with ONNX
//!   Runtime; overall and per slice.
//! - [`export`]: a window of the log as encoded model rows and their statistics, for models
//!   trained elsewhere.
//! - [`model`]: logistic regression and DLRM, forward and backward by hand.
//! - [`onnx`]: export to an ONNX graph that any ONNX Runtime loads.
//! - [`optim`]: Adam/Adagrad for dense tensors, row-wise sparse Adagrad for embeddings.
//! - [`publish`]: export, check with ONNX Runtime, publish to the registry; warm starts.
//! - [`retrain`]: the retraining loop: final hours, a candidate warm-started from production,
//!   evaluation against it, the gates, resumable recorded steps, a lease across processes.
//! - [`rollout`]: the rollout controller: online analysis of a rollout's arms and its decisions.
//! - [`metrics`]: every metric the retraining loop emits.
//! - `rng`: the seeded generator behind initial weights and shuffling.

pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod data;
mod error;
pub mod evaluate;
pub mod export;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod optim;
pub mod parallel;
pub mod publish;
pub mod retrain;
mod rng;
pub mod rollout;
pub mod train;

pub use config::TrainingConfig;
pub use error::{Error, Result};
