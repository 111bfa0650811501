//! The dead-letter topic: every message the ingester cannot use goes there with its reason,
//! before the watermark moves past it, so nothing is dropped silently.
//!
//! A dead letter keeps the original payload and says where it came from in its headers
//! (`adrank-source-topic`, `adrank-source-partition`, `adrank-source-offset`, `adrank-reason`,
//! `adrank-field`). Its key is `topic:partition:offset`: a replay after a crash may send the same
//! dead letter again, and the key lets a reader of the topic drop the copy.

use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord},
};

use crate::{Error, KafkaConfig, Result, kafka, metrics};
use adrank_contracts::events::EventError;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A short machine-readable kind, also the metric's `reason` label.
    pub kind: &'static str,
    /// The field at fault, empty for the message as a whole.
    pub field: String,
    /// What is wrong, for a person.
    pub reason: String,
}

impl Refusal {
    /// A message without a payload (a tombstone).
    pub fn empty() -> Self {
        Self { kind: "empty", field: String::new(), reason: "has no payload".into() }
    }

    /// A message whose key is not its event's key: it may sit in the wrong partition, where
    /// its impression or clicks will never be joined with it.
    pub fn key(expected: &str, got: Option<&[u8]>) -> Self {
        let got = got.map_or_else(|| "no key".to_string(), |k| format!("key `{}`", String::from_utf8_lossy(k)));
        Self { kind: "key", field: String::new(), reason: format!("has {got}; the event's key is `{expected}`") }
    }

    /// An event time too far ahead of when its message was published.
    pub fn future(error: &EventError) -> Self {
        Self { kind: "future", field: error.field.clone(), reason: error.reason.clone() }
    }

    /// An impression whose id another impression of its partition holds in the join: joined,
    /// one would take the other's clicks.
    pub fn duplicate(id: &str) -> Self {
        Self {
            kind: "duplicate",
            field: "impression_id".into(),
            reason: format!(
                "`{id}` is the id of an earlier impression still in the join's memory; kept out of the training log \
                 so that neither is mislabelled (the online counters count it)"
            ),
        }
    }

    /// A message that did not decode or broke a rule.
    pub fn event(error: &EventError) -> Self {
        let kind = if !error.field.is_empty() {
            "rule"
        } else if error.reason.starts_with("is not valid JSON") {
            "json"
        } else {
            "schema"
        };
        Self { kind, field: error.field.clone(), reason: error.reason.clone() }
    }
}

/// Sends dead letters; a round of the ingester waits for all of them before it applies anything.
#[derive(Clone)]
pub(crate) struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    brokers: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub(crate) fn new(config: &KafkaConfig) -> Result<Self> {
        let producer =
            kafka::producer_config(config).set("acks", "all").set("linger.ms", "5").create().map_err(|source| {
                Error::Kafka { brokers: config.brokers.clone(), action: "creating a producer", source }
            })?;
        Ok(Self { producer, topic: config.topics.dead_letter.name.clone(), brokers: config.brokers.clone() })
    }

    /// Queues one dead letter; the returned future resolves when the broker has it.
    pub(crate) fn send(
        &self,
        source: (&str, i32, i64),
        payload: Option<&[u8]>,
        refusal: &Refusal,
    ) -> Result<DeliveryFuture> {
        let (topic, partition, offset) = source;
        let (partition_text, offset_text) = (partition.to_string(), offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "adrank-source-topic", value: Some(topic) })
            .insert(Header { key: "adrank-source-partition", value: Some(&partition_text) })
            .insert(Header { key: "adrank-source-offset", value: Some(&offset_text) })
            .insert(Header { key: "adrank-reason", value: Some(&refusal.reason) })
            .insert(Header { key: "adrank-field", value: Some(&refusal.field) });
        let key = format!("{topic}:{partition}:{offset}");
        let record = FutureRecord::to(&self.topic).key(&key).payload(payload.unwrap_or_default()).headers(headers);
        metrics::dead_letter(topic, refusal.kind);
        tracing::warn!(topic, partition, offset, kind = refusal.kind, field = %refusal.field, reason = %refusal.reason, "dead-lettered");
        self.producer.send_result(record).map_err(|(source, _)| Error::Kafka {
            brokers: self.brokers.clone(),
            action: "queueing a dead letter",
            source,
        })
    }

    /// Waits for queued dead letters; any failure stops the round (nothing is applied, so the
    /// messages are read again).
    pub(crate) async fn confirm(&self, deliveries: Vec<DeliveryFuture>) -> Result<()> {
        for delivery in deliveries {
            let failed =
                |source| Error::Kafka { brokers: self.brokers.clone(), action: "writing a dead letter", source };
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(failed(e)),
                Err(_) => return Err(failed(rdkafka::error::KafkaError::Canceled)),
            }
        }
        Ok(())
    }
}
