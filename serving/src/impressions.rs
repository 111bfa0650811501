//! Impression logging: every served top-k goes to the impressions topic with the exact raw
//! features it was scored from (the feature store's contract), off the response path.
//!
//! [`ImpressionLog::log`] never blocks and never fails: impressions wait in a bounded buffer
//! that a background task drains into the rdkafka producer (batched, lz4-compressed). When
//! Kafka is slow or down, the producer's own queue fills, then this buffer; beyond its capacity
//! the oldest impressions are dropped and counted, so serving is never held up by logging.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use adrank_featurestore::{
    KafkaConfig,
    events::{Event as _, Impression},
    kafka,
};
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord},
};
use tokio::sync::Notify;

/// Counters of the log so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Waiting in the buffer now.
    pub buffered: u64,
    /// Acknowledged by the broker.
    pub delivered: u64,
    /// Dropped: the buffer was full (the oldest went), or the broker refused them.
    pub dropped: u64,
}

#[derive(Debug)]
struct Shared {
    buffer: Mutex<VecDeque<Impression>>,
    capacity: usize,
    wake: Notify,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

/// A handle to the impression log.
#[derive(Debug, Clone)]
pub struct ImpressionLog {
    shared: Arc<Shared>,
}

impl ImpressionLog {
    /// Starts the background sender (on the current tokio runtime) for `topic`.
    pub fn start(config: &KafkaConfig, topic: &str, capacity: usize) -> Result<Self, KafkaError> {
        let producer: FutureProducer = kafka::producer_config(config)
            .set("acks", "all")
            .set("linger.ms", "20")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "100000")
            // Give up on a message after this long: the broker is down, it counts as dropped.
            .set("message.timeout.ms", "30000")
            .create()?;
        let shared = Arc::new(Shared {
            buffer: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            wake: Notify::new(),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        tokio::spawn(send_loop(producer, topic.to_string(), Arc::clone(&shared)));
        Ok(Self { shared })
    }

    /// Queues impressions for the broker; never waits.
    pub fn log(&self, impressions: impl IntoIterator<Item = Impression>) {
        let mut buffer = self.shared.buffer.lock().expect("the buffer lock is never poisoned");
        for impression in impressions {
            buffer.push_back(impression);
            if buffer.len() > self.shared.capacity {
                buffer.pop_front();
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::impressions_dropped(1);
            }
        }
        drop(buffer);
        self.shared.wake.notify_one();
    }

    pub fn stats(&self) -> LogStats {
        LogStats {
            buffered: self.shared.buffer.lock().expect("the buffer lock is never poisoned").len() as u64,
            delivered: self.shared.delivered.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }
}

async fn send_loop(producer: FutureProducer, topic: String, shared: Arc<Shared>) {
    loop {
        let next = shared.buffer.lock().expect("the buffer lock is never poisoned").pop_front();
        let Some(impression) = next else {
            // `Arc::strong_count` 1: every handle is gone and nothing is left to send.
            if Arc::strong_count(&shared) == 1 {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), shared.wake.notified()).await;
            continue;
        };
        let payload = impression.encode();
        let record = FutureRecord::to(&topic).key(impression.key()).payload(&payload);
        match producer.send_result(record) {
            Ok(delivery) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    match delivery.await {
                        Ok(Ok(_)) => shared.delivered.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            crate::metrics::impressions_dropped(1);
                            shared.dropped.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                });
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // The producer's queue is full (the broker is slow or down): put it back and
                // wait; meanwhile the buffer fills and drops its oldest.
                shared.buffer.lock().expect("the buffer lock is never poisoned").push_front(impression);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, "an impression could not be queued for Kafka; dropped");
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::impressions_dropped(1);
            }
        }
    }
}
