//! Kafka: topic administration and the local broker for one machine.

pub mod admin;
pub mod local_broker;

use rdkafka::ClientConfig;

use crate::KafkaConfig;

/// The client settings every adrank Kafka client starts from.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", &config.client_id)
        .set("socket.timeout.ms", config.request_timeout_ms.max(10).to_string())
        // librdkafka logs every failed connection attempt; adrank reports failures itself.
        .set("log_level", "3");
    client
}

/// The settings of every adrank producer: the client settings plus Java's key partitioner, so
/// that a key lands in the same partition whichever client (Java or librdkafka) produced it.
/// That is what puts an impression and its clicks, both keyed by the impression id, in the same
/// partition of their two equally partitioned topics. Idempotent: the broker drops the
/// duplicates of a batch the producer resent after a lost acknowledgement (and keeps order).
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = client_config(config);
    client.set("partitioner", "murmur2_random").set("enable.idempotence", "true");
    client
}
