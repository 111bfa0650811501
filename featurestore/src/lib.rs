//! The feature store: everything between Kafka and the models' inputs.
//!
//! adrank's serving and training paths meet here, so that both read the same events, the same
//! online features and the same transforms (no train/serve skew).
//!
//! # Layout
//!
//! - [`config`]: the `[kafka]` and `[redis]` sections of `adrank.toml`, with their checks.
//! - [`kafka`]: topic administration ([`kafka::admin`]) and the local tansu broker that
//!   `adrank up` and the test kit start ([`kafka::local_broker`]).
//! - [`online`]: the Redis online store: its layout, the exactly-once writer the ingester uses
//!   and the pipelined read client (with its ad cache) serving uses.
//! - [`ingest`]: the ingester, a consumer-group member that applies events to the online store
//!   and joins impressions with clicks into the training log.
//! - [`training_log`]: the Parquet training log, its commits and the impression-click joiner.
//! - [`storage`]: object-store locations (local folder, `file://`, `s3://`).
//! - [`metrics`]: every metric the feature store emits.
//! - [`events`]: the JSON events on Kafka (impressions, clicks, profiles, catalog) with strict
//!   decoding.
//! - [`eval`]: log loss, AUC and normalised entropy, shared by the trainer and the world's oracle.
//! - [`request`]: the ranking request body and its rules, produced by the load-test world, read
//!   by serving.
//! - [`spec`]: the feature spec (`config/features.toml`), its version hash, and
//!   [`spec::Transformer`]: the one implementation of raw features -> model inputs, shared by
//!   serving and the trainer.
//!
//! # Data flow
//!
//! ```text
//! Kafka topics (impressions, clicks, users, ads) --> ingester --> Redis online store --> serving
//!                                                           \--> Parquet training log --> trainer
//! ```

pub mod config;
mod error;
pub mod eval;
pub mod events;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod online;
pub mod request;
pub mod spec;
pub mod storage;
pub mod training_log;

pub use config::{ConfigProblem, KafkaConfig, RedisConfig, TopicConfig, Topics};
pub use error::{Error, Result};
pub use ingest::IngestConfig;
