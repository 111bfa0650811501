//! Closed-loop load against the real server (registry, ONNX Runtime, Redis, tansu): the world
//! clicks on the served slots with its true probabilities, the clicks reach Kafka through
//! `/v1/events/click` naming the impressions the server logged, and the business figures add up.

use std::{collections::HashSet, sync::Arc, time::Duration};

use adrank_contracts::events::{Click, Event as _, Impression};
use adrank_featurestore::{
    KafkaConfig,
    kafka::{self, admin},
    online::{Reader, Wanted},
};
use adrank_loadtest::{
    generator::{Api, Arrivals, RunConfig, run},
    ranking::Ranking,
    world::{World, WorldConfig},
};
use adrank_serving::{
    ServingConfig,
    api::{AppState, run as serve_api},
    clicks::ClickSink,
    impressions::ImpressionLog,
    manager::ModelManager,
};
use adrank_trainer::model::Architecture;
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
};

use crate::{
    registry::{draft, model_file, registry},
    serving_api::{alias, manager_config},
};

/// Every payload on `topic` (waits until `n` have been read, at most 30 s).
fn read_all(config: &KafkaConfig, topic: &str, n: usize) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = kafka::client_config(config).set("group.id", "closed-loop-test").create().unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let started = std::time::Instant::now();
    let mut payloads = Vec::new();
    while payloads.len() < n && started.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            payloads.push(message.payload().unwrap().to_vec());
        }
    }
    payloads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_world_clicks_on_what_was_served_and_the_figures_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let (onnx, stats) =
        model_file(&Architecture::Dlrm { embedding_dim: 8, bottom: vec![16], top: vec![32], wide: true });
    registry.publish(draft(&onnx, &stats, "closed loop")).await.unwrap();
    registry.change("ctr", alias(1, 0)).await.unwrap();
    // Unoptimised binaries beside a whole test suite on two cores: the test is about the
    // figures, not latency, so a slow reply must not count as a failed one.
    let config = ServingConfig { default_deadline_ms: 2_000, ..ServingConfig::default() };
    let models = Arc::new(ModelManager::start(manager_config(&registry, &config)).await.unwrap());
    let redis = adrank_testkit::redis::TestRedis::new().await;
    let reader = Reader::connect(&redis.config).await.unwrap().with_wanted(Wanted::from_spec(&adrank_testkit::spec()));
    let broker = adrank_testkit::broker::TestBroker::start().await;
    admin::ensure_topics(&broker.config).await.unwrap();
    let topics = broker.config.topics.clone();
    let log = ImpressionLog::start(&broker.config, &topics.impressions.name, 10_000).unwrap();
    let clicks = ClickSink::new(&broker.config, &topics.clicks.name, Duration::from_secs(10)).unwrap();
    let state = Arc::new(AppState {
        models,
        reader: Some(reader),
        impressions: Some(log.clone()),
        clicks: Some(clicks),
        metrics: None,
        config,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_api(listener, state, std::future::pending()));

    // A high click rate so a short run has enough clicks to test.
    let world =
        World::new(WorldConfig { users: 500, advertisers: 50, ads: 400, mean_ctr: 0.1, ..WorldConfig::default() });
    let shown = world.config().shown_slots as u64;
    let ranking = Arc::new(Ranking::closed_loop(world, 200, addr, &Api::rank()));
    let run_config = RunConfig {
        target: addr,
        api: Api::rank(),
        rate: 100.0,
        duration: Duration::from_secs(4),
        warmup: Duration::from_millis(500),
        connections: 8,
        arrivals: Arrivals::Poisson,
        timeout: Duration::from_secs(5),
        seed: 7,
    };
    let report = run(&run_config, Arc::clone(&ranking), Arc::default()).await.unwrap();
    ranking.finish().await;
    assert_eq!(report.errors(), 0, "{:?} {:?}", report.statuses, report.failures);

    let business = ranking.business();
    assert_eq!(business.keys().collect::<Vec<_>>(), ["ctr/1"], "one version served");
    let b = &business["ctr/1"];
    assert_eq!(b.requests, report.samples.len() as u64, "every measured reply is booked");
    assert_eq!(b.impressions, shown * b.requests);
    // The clicks are Bernoulli draws from the true probabilities of the shown slots.
    let expected = b.true_ctr_sum;
    assert!(
        (b.clicks as f64 - expected).abs() <= 4.0 * expected.sqrt() + 2.0,
        "{} clicks, {expected:.1} expected",
        b.clicks
    );
    // An untrained model ranks worse than the truth.
    assert!(b.oracle_revenue > b.expected_revenue && b.expected_revenue > 0.0, "{b:?}");

    // Every sampled click (warm-up included) was accepted and is on the clicks topic, naming an
    // impression the server logged.
    let delivery = ranking.clicks();
    assert!(delivery.refused.is_empty() && delivery.foreign_ads == 0, "{delivery:?}");
    assert!(delivery.accepted >= b.clicks, "{delivery:?}");
    // The impression log drains in the background: wait until it is idle.
    let mut last = u64::MAX;
    for _ in 0..60 {
        let stats = log.stats();
        if stats.buffered == 0 && stats.delivered == last {
            break;
        }
        last = stats.delivered;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(log.stats().dropped, 0);
    let clicks: Vec<Click> = read_all(&broker.config, &topics.clicks.name, delivery.accepted as usize)
        .iter()
        .map(|p| Click::decode(p).unwrap())
        .collect();
    assert_eq!(clicks.len() as u64, delivery.accepted);
    let impressions: HashSet<String> = read_all(&broker.config, &topics.impressions.name, last as usize)
        .iter()
        .map(|p| Impression::decode(p).unwrap().impression_id)
        .collect();
    for click in &clicks {
        assert!(impressions.contains(&click.impression_id), "click on {} that was never logged", click.impression_id);
    }
}
