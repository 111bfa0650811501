//! The feature store: everything between Kafka and the models' inputs.
//!
//! The ingester consumes events from Kafka, keeps the online features in Redis and writes the
//! training log; serving reads the online features back. The shapes it shares with the trainer,
//! serving and the world (events, the feature spec and its transforms, the training log's format)
//! live in `adrank-contracts`, so that crates which need no Kafka or Redis client do not link one.
//!
//! # Layout
//!
//! - [`config`]: the `[kafka]` and `[redis]` sections of `adrank.toml`, with their checks.
//! - [`kafka`]: topic administration ([`kafka::admin`]) and the local tansu broker that
//!   `adrank up` and the test kit start ([`kafka::local_broker`]).
//! - [`online`]: the Redis online store: its layout, the exactly-once writer the ingester uses
//!   and the pipelined read client (with its ad cache) serving uses.
//! - [`ingest`]: the ingester, a consumer-group member that applies events to the online store
//!   and joins impressions with clicks into the training log (`adrank_contracts::training_log`).
//! - [`metrics`]: every metric the feature store emits.
//!
//! # Data flow
//!
//! ```text
//! Kafka topics (impressions, clicks, users, ads) --> ingester --> Redis online store --> serving
//!                                                           \--> Parquet training log --> trainer
//! ```

pub mod config;
mod error;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod online;
pub mod trace_context;

pub use config::{KafkaConfig, RedisConfig, TopicConfig, Topics};
pub use error::{Error, Result};
pub use ingest::IngestConfig;
