//! The feature store's error type.

use std::{net::SocketAddr, path::PathBuf};

/// Everything that can go wrong in the feature store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kafka client could not be created or a Kafka request failed.
    #[error("Kafka at {brokers}: {action} failed: {source}")]
    Kafka {
        brokers: String,
        action: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// The broker answered, but refused to create a topic.
    #[error("Kafka at {brokers}: cannot create topic `{topic}`: {reason}")]
    CreateTopic { brokers: String, topic: String, reason: String },

    /// Redis refused a connection or a command.
    #[error("Redis at {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },

    /// Deleting by key prefix was asked with none: it would delete the whole database.
    #[error("redis.key_prefix is empty: deleting the keys under it would delete every key in the database")]
    EmptyPrefix,

    /// An online read asked for more ads than one read serves.
    #[error("an online read asked for {asked} ads; at most {max} are read at once")]
    TooManyAds { asked: usize, max: usize },

    /// The training log refused a read, a write or a commit.
    #[error(transparent)]
    Log(#[from] adrank_contracts::Error),

    /// A task of the ingester (a round's apply, a log commit) ended without an answer: the
    /// runtime is shutting down.
    #[error("an ingester task stopped before it answered: {0}")]
    TaskStopped(String),

    /// No tansu executable was found in any of the places adrank looks.
    #[error(
        "no tansu broker executable found (tried: {}); run ./dev.sh setup to build it, or set \
         stack.tansu_binary in the config",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    TansuNotFound { tried: Vec<PathBuf> },

    /// A broker process could not be started or did not start listening in time.
    #[error("tansu broker on {addr}: {reason}")]
    BrokerStart { addr: SocketAddr, reason: String },
}

/// The feature store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
