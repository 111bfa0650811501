//! The contracts: what crosses crates, with no Kafka or Redis client behind it.
//!
//! The ingester writes what the trainer reads; the world produces what serving parses; serving
//! and the trainer turn raw features into model inputs with one transform. Each of those shared
//! shapes lives here, so that the trainer and the load harness link only what their role needs
//! (`cargo tree -p adrank-trainer` shows no rdkafka or redis).
//!
//! # Layout
//!
//! - [`events`]: the JSON events on Kafka (impressions, clicks, profiles, catalog) with strict
//!   decoding: objects only, integers as JSON Schema reads them, event times bounded by the clock.
//! - [`request`]: the ranking request body and its rules, produced by the load-test world, read
//!   by serving.
//! - `grpc` (feature `grpc`): the same request over gRPC, its messages generated from
//!   `proto/adrank/v1/ranking.proto`, for serving's gRPC API and the load generator.
//! - [`spec`]: the feature spec (`config/features.toml`), its version hash, and
//!   [`spec::Transformer`]: the one implementation of raw features -> model inputs, shared by
//!   serving and the trainer.
//! - [`training_log`]: the Parquet training log, its commit records and the impression-click
//!   joiner, written by the ingester (and the world's history), read by the trainer.
//! - [`arm_requests`]: the requests each rollout arm was answered, as serving publishes them on
//!   `/metrics` and the rollout controller reads them back; [`exposition`]: reading such pages.
//! - [`eval`]: log loss, AUC and normalised entropy, shared by the trainer and the world's oracle.
//! - [`storage`]: object-store locations (local folder, `file://`, `s3://`).
//! - [`ConfigProblem`]: one problem in a config section, reported alike by every crate.
//!
//! # Data flow
//!
//! ```text
//! world / product --events--> Kafka --> featurestore ingester --training_log--> trainer
//! world / product --request--> serving --spec::Transformer--> model <--spec::Transformer-- trainer
//! ```

pub mod arm_requests;
mod error;
pub mod eval;
pub mod events;
pub mod exposition;
#[cfg(feature = "grpc")]
pub mod grpc;
mod problem;
pub mod request;
pub mod spec;
pub mod storage;
pub mod training_log;

pub use error::{Error, Result};
pub use problem::ConfigProblem;
