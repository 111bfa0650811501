//! The trainer: datasets, models, optimisers, ONNX export, evaluation and the retraining loop.
//!
//! The trainer issue builds all of that here. For now this crate owns its config section,
//! which names the MPI launcher that distributed training runs under.
//!
//! # Layout
//!
//! - [`config`]: the `[training]` section of `adrank.toml`.

pub mod config;

pub use config::TrainingConfig;
