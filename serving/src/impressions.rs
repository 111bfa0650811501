//! Impression logging: every served top-k goes to the impressions topic with the exact raw
//! features it was scored from (the feature store's contract), off the response path.
//!
//! [`ImpressionLog::log`] never blocks and never fails: impressions wait in a bounded buffer
//! that a background task drains into the rdkafka producer (batched, lz4-compressed). When
//! Kafka is slow or down, the producer's own queue fills, then this buffer; beyond its capacity
//! the oldest impressions are dropped and counted, so serving is never held up by logging.
//!
//! On shutdown [`ImpressionLog::flush`] empties the buffer into the producer and waits for the
//! broker's acknowledgements: rdkafka purges whatever a producer still holds when it is dropped,
//! so without it the last moments of traffic would go unlogged.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use adrank_contracts::events::{Event as _, Impression};
use adrank_featurestore::{
    KafkaConfig, kafka,
    trace_context::{self, Carried},
};
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer as _},
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
    /// Handed to the producer, neither acknowledged nor refused yet.
    pub in_flight: u64,
}

/// An impression and the trace context of the request that served it (when spans are exported).
type Logged = (Impression, Option<Carried>);

struct Shared {
    buffer: Mutex<VecDeque<Logged>>,
    capacity: usize,
    wake: Notify,
    delivered: AtomicU64,
    dropped: AtomicU64,
    in_flight: AtomicU64,
    /// Kept here too, so that [`ImpressionLog::flush`] can flush it.
    producer: FutureProducer,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("capacity", &self.capacity).finish_non_exhaustive()
    }
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
            in_flight: AtomicU64::new(0),
            producer: producer.clone(),
        });
        tokio::spawn(send_loop(producer, topic.to_string(), Arc::clone(&shared)));
        Ok(Self { shared })
    }

    /// Queues impressions for the broker; never waits. Where spans are exported, each message
    /// carries the current span's context (a `traceparent` header).
    pub fn log(&self, impressions: impl IntoIterator<Item = Impression>) {
        let context = trace_context::current();
        let mut buffer = self.shared.buffer.lock().expect("the buffer lock is never poisoned");
        for impression in impressions {
            buffer.push_back((impression, context.clone()));
            if buffer.len() > self.shared.capacity {
                buffer.pop_front();
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::impressions_dropped(1, "buffer_full", None);
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
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
        }
    }

    /// Sends everything logged so far and waits, at most `timeout`, until the broker has
    /// acknowledged (or refused) all of it; what is left then is in the returned counts
    /// (`buffered`, `in_flight`). For shutdown, once nothing logs any more.
    pub async fn flush(&self, timeout: Duration) -> LogStats {
        let deadline = Instant::now() + timeout;
        let pause = Duration::from_millis(5);
        // The sender empties the buffer into the producer.
        while self.stats().buffered > 0 && Instant::now() < deadline {
            self.shared.wake.notify_one();
            tokio::time::sleep(pause).await;
        }
        // Then the producer sends what it holds (its linger would otherwise wait), blocking a
        // thread of its own while it does.
        let producer = self.shared.producer.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        let flushed = tokio::task::spawn_blocking(move || producer.flush(left)).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "the impression log's producer did not flush in time");
        }
        // The delivery reports resolve on tasks of their own.
        while self.stats().in_flight > 0 && Instant::now() < deadline {
            tokio::time::sleep(pause).await;
        }
        self.stats()
    }
}

async fn send_loop(producer: FutureProducer, topic: String, shared: Arc<Shared>) {
    loop {
        let next = {
            let mut buffer = shared.buffer.lock().expect("the buffer lock is never poisoned");
            // Counted in flight as it leaves the buffer: a flush always sees it in one or the other.
            let next = buffer.pop_front();
            if next.is_some() {
                shared.in_flight.fetch_add(1, Ordering::Relaxed);
            }
            next
        };
        let Some((impression, context)) = next else {
            // `Arc::strong_count` 1: every handle is gone and nothing is left to send.
            if Arc::strong_count(&shared) == 1 {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), shared.wake.notified()).await;
            continue;
        };
        let payload = impression.encode();
        let mut record = FutureRecord::to(&topic).key(impression.key()).payload(&payload);
        if let Some(context) = &context {
            record = record.headers(trace_context::kafka_headers(context));
        }
        match producer.send_result(record) {
            Ok(delivery) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let failure = match delivery.await {
                        Ok(Ok(_)) => None,
                        Ok(Err((e, _))) => Some(e.to_string()),
                        Err(_) => Some("the producer went away before the broker answered".to_string()),
                    };
                    match failure {
                        None => shared.delivered.fetch_add(1, Ordering::Relaxed),
                        Some(e) => {
                            crate::metrics::impressions_dropped(1, "not_delivered", Some(&e));
                            shared.dropped.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // The producer's queue is full (the broker is slow or down): put it back and
                // wait; meanwhile the buffer fills and drops its oldest.
                {
                    let mut buffer = shared.buffer.lock().expect("the buffer lock is never poisoned");
                    buffer.push_front((impression, context));
                    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err((e, _)) => {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                crate::metrics::impressions_dropped(1, "not_queued", Some(&e));
            }
        }
    }
}
