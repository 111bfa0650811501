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
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
        adrank_contracts::events::Impression::example(&format!("i-{i}"), adrank_contracts::events::RawFeatures::new())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_is_read_once_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let port = adrank_testkit::free_port();
    let redis_config = RedisConfig { url: format!("redis://127.0.0.1:{port}/0"), ..RedisConfig::default() };
    assert!(Reader::connect(&redis_config).await.is_err(), "nothing listens on {port} yet");
    let reader = Reader::lazy(&redis_config).unwrap().with_wanted(Wanted::from_spec(&adrank_testkit::spec()));
    let config = ServingConfig::default();
    let addr = serve(models(dir.path(), &config).await, Some(reader), None, config).await;
    let mut world = world();
    let (status, _, text) = http(addr, "POST", "/v1/rank", body(&mut world).as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    assert!(serde_json::from_str::<RankResponse>(&text).unwrap().degraded, "{text:.200}");
    // Ready (it ranks, with defaults), and honest about it; not ready for a caller that
    // requires features.
    let (status, _, text) = http(addr, "GET", "/readyz", b"").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"online_store\":\"unreachable\""), "{text}");
    let (status, _, text) = http(addr, "GET", "/readyz?require=features", b"").await;
    assert_eq!(status, 503, "{text}");

    // It was degraded for life before: the reader never tried again.
    let _redis = own_redis(port);
    let (status, _, text) = http(addr, "POST", "/v1/rank", body(&mut world).as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    assert!(!serde_json::from_str::<RankResponse>(&text).unwrap().degraded, "{text:.200}");
    let (status, _, text) = http(addr, "GET", "/readyz?require=features", b"").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"online_store\":\"ok\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_beyond_the_limit_do_not_starve_real_requests() {
    let dir = tempfile::tempdir().unwrap();
    // A long header deadline: making room, not the deadline, is what this tests.
    let config = ServingConfig { max_connections: 20, header_timeout_ms: 60_000, ..ServingConfig::default() };
    let addr = serve(models(dir.path(), &config).await, None, None, config).await;
    // Twice the limit in clients that connect and say nothing, or half a header.
    let mut silent = Vec::new();
    for i in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            stream.write_all(b"POST /v1/rank HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        }
        silent.push(stream);
    }
    let mut world = world();
    for _ in 0..10 {
        let (status, _, text) = http(addr, "POST", "/v1/rank", body(&mut world).as_bytes()).await;
        assert_eq!(status, 200, "{text:.200}");
        assert_eq!(http(addr, "GET", "/healthz", b"").await.0, 200);
    }
    // The server closed the oldest silent ones to make room.
    let mut closed = 0;
    for stream in &mut silent[..20] {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await {
            closed += 1;
        }
    }
    assert!(closed >= 10, "only {closed} of the oldest silent connections were closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_header_and_half_a_body_are_cut_off_at_their_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServingConfig { header_timeout_ms: 300, body_timeout_ms: 300, ..ServingConfig::default() };
    let addr = serve(models(dir.path(), &config).await, None, None, config).await;
    // Half a header: the connection is closed (it held a place and a file for ever before).
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"POST /v1/rank HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection is still open 30 s after a 300 ms header deadline");
    // Half a body: 408 with the JSON error shape.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head =
        "POST /v1/rank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"req";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = String::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut response)).await;
    assert!(read.is_ok(), "no answer 30 s after a 300 ms body deadline");
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"body_timeout\""), "{response}");
    // An idle keep-alive connection is closed at the header deadline too.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut everything = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut everything)).await;
    assert!(read.is_ok(), "an idle keep-alive connection is still open 30 s after the deadline");
    assert!(String::from_utf8_lossy(&everything).starts_with("HTTP/1.1 200"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_failing_in_inference_on_live_traffic_hands_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServingConfig::default();
    let state = model_only(dir.path(), config).await;
    let registry = state.models.registry().clone();
    // Version 2 takes the probe and the warm-up, and fails on any real surface.
    let spec = adrank_testkit::spec();
    let column = spec.id_features().position(|f| f.name == "surface").unwrap();
    let largest = spec.largest_ids()[column].1;
    let shape = adrank_trainer::model::InputShape::of(&spec);
    let fragile = adrank_trainer::onnx::fails_on_live_ids(&shape, column, largest);
    let stats = adrank_contracts::spec::TransformStats::fit(&spec, std::iter::empty());
    registry.publish(draft(&fragile, &stats, "fragile")).await.unwrap();
    registry.change("ctr", alias(2, 1)).await.unwrap();
    assert_eq!(state.models.refresh().await.unwrap(), adrank_serving::manager::Refresh::Swapped { from: 1, to: 2 });
    let addr = serve(Arc::clone(&state.models), None, None, state.config.clone()).await;

    // The request that met the failure is told what failed; the next ones get version 1.
    let mut world = world();
    let (status, _, text) = http(addr, "POST", "/v1/rank", body(&mut world).as_bytes()).await;
    assert_eq!(status, 500, "{text}");
    let error: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["kind"], "inference_failed", "{text}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("version 2 inference failed: ONNX Runtime failed to run the model"), "{message}");
    assert!(message.ends_with("the previous version serves from now on"), "{message}");
    for _ in 0..5 {
        let (status, _, text) = http(addr, "POST", "/v1/rank", body(&mut world).as_bytes()).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(serde_json::from_str::<RankResponse>(&text).unwrap().model.version, 1);
    }
    // Refused until the alias moves: the next refreshes leave version 1 serving.
    assert_eq!(state.models.refresh().await.unwrap(), adrank_serving::manager::Refresh::Unchanged);
    assert_eq!(state.models.default_version().manifest.version, 1);
}
