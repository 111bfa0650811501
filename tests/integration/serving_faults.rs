//! Serving under faults: a graceful shutdown answers every accepted request, within its drain
//! deadline, and delivers the impression log; Kafka stopping mid-run and Redis stopping mid-run
//! (a redis-server of the test's own) never fail a request.

use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use adrank_featurestore::{
    RedisConfig,
    kafka::admin,
    online::{Reader, Wanted},
};
use adrank_loadtest::world::{World, WorldConfig};
use adrank_serving::{
    ServingConfig,
    api::{AppState, run, run_with_drain_deadline},
    impressions::{ImpressionLog, LogStats},
    manager::ModelManager,
    rank::RankResponse,
};
use adrank_trainer::model::Architecture;

use crate::{
    registry::{draft, model_file, registry},
    serving_api::{alias, body, http, manager_config, serve},
};

/// A child process killed when the test ends, also when it panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A registry holding one small model as `production`, and a manager serving it.
async fn models(dir: &std::path::Path, config: &ServingConfig) -> Arc<ModelManager> {
    let registry = registry(dir);
    let (onnx, stats) = model_file(&Architecture::Dlrm { embedding_dim: 4, bottom: vec![8], top: vec![8], wide: true });
    registry.publish(draft(&onnx, &stats, "faults")).await.unwrap();
    registry.change("ctr", alias(1, 0)).await.unwrap();
    Arc::new(ModelManager::start(manager_config(&registry, config)).await.unwrap())
}

/// A server's state with a model and nothing else (no Redis, Kafka or metrics).
async fn model_only(dir: &std::path::Path, config: ServingConfig) -> Arc<AppState> {
    let models = models(dir, &config).await;
    Arc::new(AppState { models, reader: None, impressions: None, clicks: None, metrics: None, config })
}

fn world() -> World {
    World::new(WorldConfig { users: 300, advertisers: 30, ads: 300, ..WorldConfig::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_answers_every_accepted_request() {
    let dir = tempfile::tempdir().unwrap();
    // Requests wait up to 300 ms in the batcher, so they are accepted and in flight when the
    // shutdown starts.
    let config = ServingConfig { max_queue_delay_ms: 300, max_batch_rows: 100_000, ..ServingConfig::default() };
    let state = model_only(dir.path(), config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, state, async {
        let _ = stopped.await;
    }));
    let mut world = world();
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let mut request: serde_json::Value = serde_json::from_str(&body(&mut world)).unwrap();
            request["deadline_ms"] = 5_000.into();
            tokio::spawn(async move { http(addr, "POST", "/v1/rank", request.to_string().as_bytes()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    for request in requests {
        let (status, _, text) = request.await.unwrap();
        assert_eq!(status, 200, "an accepted request is answered through the shutdown: {text}");
    }
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("the server stops").unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "nothing listens after the shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_for_stuck_requests_no_longer_than_its_drain_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServingConfig::default();
    let state = model_only(dir.path(), config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let drain = Duration::from_millis(300);
    let server = tokio::spawn(run_with_drain_deadline(
        listener,
        state,
        async {
            let _ = stopped.await;
        },
        drain,
    ));
    // A client that sends its headers and then stalls halfway through the body: its request
    // stays in flight until the drain deadline.
    let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head =
        "POST /v1/rank HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{";
    tokio::io::AsyncWriteExt::write_all(&mut stuck, head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = Instant::now();
    stop.send(()).unwrap();
    let drained =
        tokio::time::timeout(Duration::from_secs(4), server).await.expect("the server stops").unwrap().unwrap();
    assert!(!drained, "the stuck request was abandoned, not answered");
    assert!(stopping.elapsed() >= drain, "the drain waited its deadline: {:?}", stopping.elapsed());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "nothing listens after the shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_impression_log_reaches_kafka_before_the_exit() {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    // Persistent: the memory engine's high watermarks are not exact.
    let broker = adrank_testkit::broker::TestBroker::start_persistent().await;
    admin::ensure_topics(&broker.config).await.unwrap();
    let topic = broker.config.topics.impressions.clone();
    let log = ImpressionLog::start(&broker.config, &topic.name, 10_000).unwrap();
    // Logged in one go, then flushed at once: most are still in the buffer or the producer's
    // queue (which a dropped producer purges) when the flush starts.
    let impressions = (0..3_000).map(|i| {
        adrank_featurestore::events::Impression::example(
            &format!("i-{i}"),
            adrank_featurestore::events::RawFeatures::new(),
        )
    });
    log.log(impressions);
    let stats = log.flush(Duration::from_secs(20)).await;
    assert_eq!(stats, LogStats { buffered: 0, delivered: 3_000, dropped: 0, in_flight: 0 });
    drop(log);
    let consumer: BaseConsumer = adrank_featurestore::kafka::client_config(&broker.config).create().unwrap();
    let mut on_broker = 0;
    for partition in 0..topic.partitions.get() as i32 {
        on_broker += consumer.fetch_watermarks(&topic.name, partition, Duration::from_secs(10)).unwrap().1;
    }
    assert_eq!(on_broker, 3_000, "every impression is on the broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_stopping_mid_run_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let broker = adrank_testkit::broker::TestBroker::start().await;
    admin::ensure_topics(&broker.config).await.unwrap();
    let log = ImpressionLog::start(&broker.config, &broker.config.topics.impressions.name, 1_000).unwrap();
    let config = ServingConfig::default();
    let addr = serve(models(dir.path(), &config).await, None, Some(log.clone()), config).await;
    let mut world = world();
    for _ in 0..5 {
        assert_eq!(http(addr, "POST", "/v1/rank", body(&mut world).as_bytes()).await.0, 200);
    }
    let started = Instant::now();
    while log.stats().delivered == 0 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(log.stats().delivered > 0, "impressions reached the broker while it ran: {:?}", log.stats());
    drop(broker); // Kills the broker process.
    for _ in 0..30 {
        let started = Instant::now();
        let (status, _, text) = http(addr, "POST", "/v1/rank", body(&mut world).as_bytes()).await;
        assert_eq!(status, 200, "{text}");
        assert!(started.elapsed() < Duration::from_secs(1), "serving does not wait on Kafka");
    }
    let stats = log.stats();
    assert!(stats.buffered + stats.dropped > 0 || stats.delivered > 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopping_mid_run_degrades_requests_instead_of_failing_them() {
    let dir = tempfile::tempdir().unwrap();
    // A redis-server of this test's own, so it can be stopped (the machine's is shared).
    let port = adrank_testkit::free_port();
    let mut redis = own_redis(port);
    let redis_config = RedisConfig { url: format!("redis://127.0.0.1:{port}/0"), ..RedisConfig::default() };
    let started = Instant::now();
    let reader = loop {
        match Reader::connect(&redis_config).await {
            Ok(reader) => break reader,
            Err(e) if started.elapsed() > Duration::from_secs(10) => {
                panic!("the test's redis-server did not start: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let config = ServingConfig::default();
    let reader = reader.with_wanted(Wanted::from_spec(&adrank_testkit::spec()));
    let addr = serve(models(dir.path(), &config).await, Some(reader), None, config).await;
    let mut world = world();
    let (status, _, text) = http(addr, "POST", "/v1/rank", body(&mut world).as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    assert!(!serde_json::from_str::<RankResponse>(&text).unwrap().degraded);

    redis.0.kill().unwrap();
    redis.0.wait().unwrap();
    for _ in 0..5 {
        let started = Instant::now();
        let (status, _, text) = http(addr, "POST", "/v1/rank", body(&mut world).as_bytes()).await;
        assert_eq!(status, 200, "{text}");
        assert!(serde_json::from_str::<RankResponse>(&text).unwrap().degraded, "{text:.200}");
        assert!(started.elapsed() < Duration::from_millis(500), "answered within the deadline");
    }

    // Redis back: features are read again. Then a restart between two requests costs neither of
    // them: the pooled connections the old server closed are replaced, not failed on.
    for restart in 0..2 {
        if restart == 1 {
            redis.0.kill().unwrap();
            redis.0.wait().unwrap();
        }
        redis = own_redis(port);
        let (status, _, text) = http(addr, "POST", "/v1/rank", body(&mut world).as_bytes()).await;
        assert_eq!(status, 200, "{text}");
        assert!(!serde_json::from_str::<RankResponse>(&text).unwrap().degraded, "restart {restart}: {text:.200}");
    }
}

/// A redis-server of the test's own on `port`, answering.
fn own_redis(port: u16) -> KillOnDrop {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs (Debian's redis-server package)");
    let redis = KillOnDrop(child);
    let started = Instant::now();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
    while client.get_connection().and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "the test's redis-server did not start on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    redis
}
