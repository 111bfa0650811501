//! How far the online store is behind the broker, read from outside the ingesters (for `adrank
//! status`): per topic, the messages past Redis's exactly-once watermarks, and how old the oldest
//! of them is. Both hold whether any ingester runs, and whichever ingester holds a partition.

use std::{collections::HashMap, time::Duration};

use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
};
use redis::AsyncCommands as _;
use serde::Serialize;

use crate::{Error, KafkaConfig, RedisConfig, Result, online::layout};

/// One consumed topic's standing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopicStanding {
    pub topic: String,
    pub partitions: usize,
    /// Messages the broker holds past the start of retention, summed over the partitions.
    pub end: i64,
    /// Messages not yet applied to the online store.
    pub lag: i64,
    /// The broker timestamp of the oldest message not yet applied, milliseconds since the Unix
    /// epoch (`None`: nothing pending, or its message could not be read in time).
    pub oldest_pending_ms: Option<i64>,
}

/// How long reading the oldest pending message of every lagging partition may take.
const PEEK_WITHIN: Duration = Duration::from_secs(5);

/// The standing of every topic the ingesters consume (all but the dead-letter topic).
pub async fn standing(kafka: &KafkaConfig, redis: &RedisConfig) -> Result<Vec<TopicStanding>> {
    let mut connection = crate::online::connect(redis).await?;
    let applied: HashMap<String, i64> = connection
        .hgetall(layout::offsets_key(&redis.key_prefix))
        .await
        .map_err(|source| Error::Redis { url: redis.url.clone(), source })?;
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || read_broker(&kafka, &applied))
        .await
        .map_err(|e| Error::TaskStopped(format!("reading the broker's watermarks: {e}")))?
}

fn read_broker(config: &KafkaConfig, applied: &HashMap<String, i64>) -> Result<Vec<TopicStanding>> {
    let kafka_error = |action| move |source| Error::Kafka { brokers: config.brokers.clone(), action, source };
    let mut client = crate::kafka::client_config(config);
    // librdkafka assigns partitions only to a consumer with a group; this one never joins it
    // (no subscription) and never commits.
    client.set("group.id", "adrank-status").set("enable.auto.commit", "false");
    let consumer: BaseConsumer = client.create().map_err(kafka_error("creating a consumer"))?;
    let timeout = Duration::from_millis(config.request_timeout_ms.max(1000));
    let mut topics = Vec::new();
    // Where each lagging partition's first pending message is.
    let mut pending = TopicPartitionList::new();
    for (key, topic) in config.topics.all() {
        if key == "dead_letter" {
            continue;
        }
        let mut standing = TopicStanding {
            topic: topic.name.clone(),
            partitions: topic.partitions.get() as usize,
            end: 0,
            lag: 0,
            oldest_pending_ms: None,
        };
        for partition in 0..topic.partitions.get() as i32 {
            let (low, high) = consumer
                .fetch_watermarks(&topic.name, partition, timeout)
                .map_err(kafka_error("reading a partition's watermarks"))?;
            let next = applied.get(&layout::offsets_field(&topic.name, partition)).copied().unwrap_or(0).max(low);
            standing.end += high - low;
            if next < high {
                standing.lag += high - next;
                pending
                    .add_partition_offset(&topic.name, partition, Offset::Offset(next))
                    .map_err(kafka_error("naming a partition to read"))?;
            }
        }
        topics.push(standing);
    }
    if pending.count() > 0 {
        consumer.assign(&pending).map_err(kafka_error("assigning the lagging partitions"))?;
        let mut oldest: HashMap<String, i64> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        let deadline = std::time::Instant::now() + PEEK_WITHIN;
        while seen.len() < pending.count() && std::time::Instant::now() < deadline {
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else { continue };
            if !seen.insert((message.topic().to_string(), message.partition())) {
                continue;
            }
            if let Some(ms) = message.timestamp().to_millis() {
                let entry = oldest.entry(message.topic().to_string()).or_insert(ms);
                *entry = (*entry).min(ms);
            }
        }
        for standing in &mut topics {
            standing.oldest_pending_ms = oldest.get(&standing.topic).copied();
        }
    }
    Ok(topics)
}
