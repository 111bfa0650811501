//! Produce and consume through a real tansu broker with rdkafka.

use std::{collections::BTreeMap, time::Duration};

use adrank_featurestore::kafka::{self, admin};
use adrank_testkit::broker::TestBroker;
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer as _, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};

const MESSAGES: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_round_trip_in_order_and_commits_stick() {
    let broker = TestBroker::start().await;
    let config = &broker.config;
    let created = admin::ensure_topics(config).await.expect("topics are created");
    assert_eq!(created.len(), 5, "every configured topic is reported");
    let state = admin::describe(config).await.unwrap();
    assert_eq!(state.missing().count(), 0, "{state:?}");
    let topic = config.topics.impressions.name.clone();

    let producer: FutureProducer = kafka::producer_config(config).set("acks", "all").create().unwrap();
    let mut deliveries = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let key = format!("user-{}", i % 37);
        let payload = format!("{i}");
        let record = FutureRecord::to(&topic).key(&key).payload(&payload);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).expect("the producer queue has room"));
    }
    for delivery in deliveries {
        within(delivery, "a delivery report", &broker)
            .await
            .expect("delivery is reported")
            .expect("the broker accepts the message");
    }

    let consumer = consumer(config, "round-trip");
    consumer.subscribe(&[&topic]).unwrap();
    // Per key, payloads must come back in the order they were sent: the key picks one partition.
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut received = 0;
    while received < MESSAGES {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("only {received} of {MESSAGES} messages arrived; broker log:\n{}", broker.log_text())
            })
            .expect("the consumer reads");
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let value: usize = std::str::from_utf8(message.payload().unwrap()).unwrap().parse().unwrap();
        by_key.entry(key).or_default().push(value);
        received += 1;
    }
    for (key, values) in &by_key {
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{key} came back out of order: {values:?}");
    }
    let mut all: Vec<usize> = by_key.into_values().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (0..MESSAGES).collect::<Vec<_>>(), "every message exactly once");

    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    // The list must be gone before the consumer closes: its entries hold librdkafka partition
    // references, and closing waits for every reference to drop (it hangs otherwise).
    let total = committed_total(&consumer.committed(Duration::from_secs(10)).unwrap());
    assert_eq!(total, MESSAGES as i64, "committed offsets cover every message");

    // Closing a consumer blocks until librdkafka has left the group: never on the async runtime.
    within(tokio::task::spawn_blocking(move || drop(consumer)), "consumer close", &broker).await.unwrap();
    let again = self::consumer(config, "round-trip");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..config.topics.impressions.partitions.get() as i32 {
        assignment.add_partition(&topic, partition);
    }
    let total = committed_total(&again.committed_offsets(assignment, Duration::from_secs(10)).unwrap());
    assert_eq!(total, MESSAGES as i64, "the group's offsets are stored by the broker");
    within(tokio::task::spawn_blocking(move || drop(again)), "consumer close", &broker).await.unwrap();
}

fn committed_total(list: &TopicPartitionList) -> i64 {
    list.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            other => panic!("partition {} has no committed offset: {other:?}", e.partition()),
        })
        .sum()
}

/// Awaits `future` for at most 60 s, failing with the broker's log when it takes longer.
async fn within<T>(future: impl std::future::Future<Output = T>, what: &str, broker: &TestBroker) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("no {what} within 60 s; broker log:\n{}", broker.log_text()))
}

fn consumer(config: &adrank_featurestore::KafkaConfig, group: &str) -> StreamConsumer {
    kafka::client_config(config)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // tansu's memory engine lets a group form after session.timeout.ms / 2.
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap()
}

/// An impression and its click, keyed by the impression id, land in the same partition of their
/// two topics: the ingester's join depends on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impression_and_its_click_share_a_partition() {
    use adrank_contracts::events::{Click, Event as _, Impression, RawFeatures};

    let broker = TestBroker::start().await;
    let config = &broker.config;
    admin::ensure_topics(config).await.unwrap();
    let producer: FutureProducer = kafka::producer_config(config).create().unwrap();
    for i in 0..50 {
        let impression = Impression::example(&format!("imp-{i}"), RawFeatures::new());
        let click = Click::on(&impression, format!("c-{i}"), 1);
        let (payload, key) = (impression.encode(), impression.key().to_string());
        let record = FutureRecord::to(&config.topics.impressions.name).key(&key).payload(&payload);
        let imp_partition =
            within(producer.send(record, Duration::from_secs(10)), "delivery", &broker).await.unwrap().partition;
        let (payload, key) = (click.encode(), click.key().to_string());
        let record = FutureRecord::to(&config.topics.clicks.name).key(&key).payload(&payload);
        let click_partition =
            within(producer.send(record, Duration::from_secs(10)), "delivery", &broker).await.unwrap().partition;
        assert_eq!(imp_partition, click_partition, "impression {i} and its click were split");
    }
}

/// The persistent (sqlite) test broker reports exact high watermarks, which lag metrics and
/// "read to the end" depend on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_broker_watermarks_are_exact() {
    let broker = TestBroker::start_persistent().await;
    let config = &broker.config;
    admin::ensure_topics(config).await.unwrap();
    let topic = &config.topics.clicks.name;
    let producer: FutureProducer = kafka::producer_config(config).set("acks", "all").create().unwrap();
    let mut deliveries = Vec::new();
    for i in 0..1_000 {
        let key = format!("k{i}");
        let record = FutureRecord::to(topic).key(&key).payload("x");
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for delivery in deliveries {
        within(delivery, "a delivery report", &broker).await.unwrap().unwrap();
    }
    let config = config.clone();
    let topic = topic.clone();
    let total: i64 = tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = kafka::client_config(&config).create().unwrap();
        (0..config.topics.clicks.partitions.get() as i32)
            .map(|p| {
                let (low, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)).unwrap();
                high - low
            })
            .sum()
    })
    .await
    .unwrap();
    assert_eq!(total, 1_000);
}
