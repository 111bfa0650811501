//! Publishing to Kafka with a bounded number of unacknowledged messages.

use std::{collections::VecDeque, time::Duration};

use adrank_contracts::events::Event;
use adrank_featurestore::{KafkaConfig, kafka};
use anyhow::Context as _;
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    producer::{DeliveryFuture, FutureProducer, FutureRecord},
};

/// A producer with a bounded number of unacknowledged messages.
pub(crate) struct Publisher {
    producer: FutureProducer,
    in_flight: VecDeque<DeliveryFuture>,
    /// Messages the broker has acknowledged.
    pub(crate) acknowledged: u64,
}

/// Unacknowledged messages allowed before waiting for the oldest.
const MAX_IN_FLIGHT: usize = 200_000;

impl Publisher {
    pub(crate) fn new(config: &KafkaConfig) -> anyhow::Result<Self> {
        let producer = kafka::producer_config(config)
            .set("acks", "all")
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            // JSON events compress several-fold: the broker stores and serves fewer bytes.
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .context("cannot create a Kafka producer")?;
        Ok(Self { producer, in_flight: VecDeque::new(), acknowledged: 0 })
    }

    /// Publishes one event (encoded as its contract says, under its key).
    pub(crate) async fn send(&mut self, topic: &str, event: &impl Event) -> anyhow::Result<()> {
        self.send_raw(topic, event.key(), &event.encode()).await
    }

    /// Publishes one message.
    pub(crate) async fn send_raw(&mut self, topic: &str, key: &str, payload: &[u8]) -> anyhow::Result<()> {
        loop {
            let record = FutureRecord::to(topic).key(key).payload(payload);
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.in_flight.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => self.wait_oldest().await?,
                Err((e, _)) => return Err(e).context(format!("cannot publish to {topic}")),
            }
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    async fn wait_oldest(&mut self) -> anyhow::Result<()> {
        match self.in_flight.pop_front() {
            Some(delivery) => {
                delivery
                    .await
                    .context("the producer went away")?
                    .map_err(|(e, _)| e)
                    .context("the broker refused a message")?;
                self.acknowledged += 1;
            }
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
        Ok(())
    }

    /// Waits until every message is acknowledged.
    pub(crate) async fn finish(&mut self) -> anyhow::Result<()> {
        while !self.in_flight.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(())
    }
}
