//! `POST /v1/events/click`: clicks over HTTP, for product services that do not speak Kafka.
//!
//! A click is a label: unlike an impression it is not fire-and-forget. The request is answered
//! 202 only once the broker has acknowledged it, and 503 when it does not within the timeout, so
//! the caller retries (a retried click keeps its `click_id` and counts once downstream).

use std::time::Duration;

use adrank_contracts::events::{self, Click, Event as _, EventError};
use adrank_featurestore::{KafkaConfig, kafka};
use rdkafka::{
    error::KafkaError,
    producer::{FutureProducer, FutureRecord},
};

/// Publishes clicks and waits for the broker.
#[derive(Clone)]
pub struct ClickSink {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl std::fmt::Debug for ClickSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickSink").field("topic", &self.topic).finish()
    }
}

/// Why a click was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ClickError {
    #[error(transparent)]
    Invalid(#[from] EventError),
    #[error("Kafka did not acknowledge the click: {0}")]
    Unavailable(KafkaError),
}

impl ClickSink {
    pub fn new(config: &KafkaConfig, topic: &str, timeout: Duration) -> Result<Self, KafkaError> {
        let producer = kafka::producer_config(config)
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
            .create()?;
        Ok(Self { producer, topic: topic.into(), timeout })
    }

    /// Decodes, validates and publishes one click (keyed by its impression id, so it lands in
    /// its impression's partition); returns it once the broker has it.
    /// A click more than `max_skew_ms` ahead of this server's clock is refused.
    pub async fn accept(&self, body: &[u8], max_skew_ms: i64) -> Result<Click, ClickError> {
        let click = Click::decode(body)?;
        events::not_ahead("event_time_ms", click.event_time_ms, events::now_ms(), max_skew_ms)?;
        let payload = click.encode();
        let record = FutureRecord::to(&self.topic).key(click.key()).payload(&payload);
        self.producer.send(record, self.timeout).await.map_err(|(e, _)| ClickError::Unavailable(e))?;
        Ok(click)
    }
}
