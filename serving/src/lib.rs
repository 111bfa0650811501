//! Serving: the HTTP ranking API.
//!
//! The serving issue builds here the axum ranking API, admission control, the dynamic batcher
//! over ONNX Runtime, the model manager with hot swaps, the rollout router and the impression
//! logger. For now this crate owns its config section.
//!
//! # Layout
//!
//! - [`config`]: the `[serving]` section of `adrank.toml`.
//! - [`batcher`]: the dynamic batcher: concurrent requests' rows merged into ONNX Runtime runs,
//!   with a bounded queue, deadlines, and the model on its own thread.

pub mod batcher;
pub mod config;

pub use config::ServingConfig;
