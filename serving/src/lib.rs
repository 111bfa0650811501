//! Serving: the HTTP ranking API.
//!
//! The serving issue builds here the axum ranking API, admission control, the dynamic batcher
//! over ONNX Runtime, the model manager with hot swaps, the rollout router and the impression
//! logger. For now this crate owns its config section.
//!
//! # Layout
//!
//! - [`config`]: the `[serving]` section of `adrank.toml`.
//! - [`api`]: the HTTP API (axum): validation to 4xx naming the field, overload to 429.
//! - [`grpc`]: the same ranking API over gRPC (tonic), beside HTTP on a port of its own.
//! - [`connections`]: accepting connections within a limit, with header and idle deadlines.
//! - [`clicks`]: `POST /v1/events/click`, published to Kafka and acknowledged before 202.
//! - [`impressions`]: the served top-k to Kafka with the exact features used, never blocking.
//! - [`manager`]: the loaded versions, the default one, hot swaps when the followed alias moves.
//! - [`metrics`]: every metric serving emits (Prometheus, at `/metrics`).
//! - [`rank`]: one request: features from the online store, transforms, batcher, ranking.
//! - [`rows`]: a request's model rows: what every candidate shares encoded once, the rest per
//!   candidate, each stored record resolved once.
//! - [`shadow`]: at a rollout's shadow step, a sample of requests scored again by the
//!   candidate after the reply: bounded, droppable, compared with production.
//! - [`batcher`]: the dynamic batcher: concurrent requests' rows merged into ONNX Runtime runs,
//!   with a bounded queue, deadlines, and the model on its own thread.
//! - [`model`]: loading a version from the registry: verified (SHA-256, spec, signature),
//!   warmed at the batch sizes the batcher forms, with its batcher started.

pub mod admin;
pub mod admission;
pub mod api;
pub mod batcher;
pub mod clicks;
pub mod config;
pub mod connections;
mod error;
pub mod gpu;
pub mod grpc;
pub mod ids;
pub mod impressions;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod rank;
pub mod rows;
pub mod shadow;
mod throttle;

pub use config::ServingConfig;
pub use error::{Error, Result};
