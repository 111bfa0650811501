//! The Redis online store: its layout ([`layout`]), the exactly-once writer the ingester uses
//! ([`writer`]) and the read client serving uses ([`reader`]).

pub mod layout;
pub mod reader;
mod resp;
pub mod writer;

pub use reader::{AdFeatures, AdRef, Fetched, Missing, Reader, Wanted};
pub use writer::{Outcome, PartitionBatch, Updates, Writer};

use crate::{Error, RedisConfig, Result};

/// Opens a multiplexed connection to the configured Redis; connecting and every response must
/// come within the connect timeout (what serving wants: a slow Redis means default features).
pub async fn connect(config: &RedisConfig) -> Result<redis::aio::MultiplexedConnection> {
    connect_with(config, config.connect_timeout()).await
}

/// Opens a connection whose responses may take up to `response_timeout` (the ingester's
/// scripts apply thousands of events at once).
pub async fn connect_with(
    config: &RedisConfig,
    response_timeout: std::time::Duration,
) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(config.url.as_str()).map_err(|e| redis_error(config, e))?;
    let settings = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout()))
        .set_response_timeout(Some(response_timeout));
    client.get_multiplexed_async_connection_with_config(&settings).await.map_err(|e| redis_error(config, e))
}

/// The version of the Redis server behind `config`, read from `INFO server`.
pub async fn server_version(config: &RedisConfig) -> Result<String> {
    let mut connection = connect(config).await?;
    let info: String =
        redis::cmd("INFO").arg("server").query_async(&mut connection).await.map_err(|e| redis_error(config, e))?;
    Ok(info.lines().find_map(|line| line.strip_prefix("redis_version:")).unwrap_or("unknown").trim().to_string())
}

/// Deletes every key under `config.key_prefix` (`adrank down --wipe`);
/// returns how many. Refuses an empty prefix: that would be the whole database.
pub async fn delete_all(config: &RedisConfig) -> Result<usize> {
    if config.key_prefix.is_empty() {
        return Err(Error::EmptyPrefix);
    }
    let mut connection = connect(config).await?;
    let pattern = format!("{}*", config.key_prefix);
    let mut keys: Vec<String> = Vec::new();
    {
        use redis::AsyncCommands as _;
        let mut scan = connection.scan_match::<_, String>(&pattern).await.map_err(|e| redis_error(config, e))?;
        while let Some(key) = scan.next_item().await {
            keys.push(key.map_err(|e| redis_error(config, e))?);
        }
    }
    for chunk in keys.chunks(10_000) {
        redis::cmd("UNLINK").arg(chunk).query_async::<()>(&mut connection).await.map_err(|e| redis_error(config, e))?;
    }
    Ok(keys.len())
}

fn redis_error(config: &RedisConfig, source: redis::RedisError) -> Error {
    Error::Redis { url: config.url.clone(), source }
}
