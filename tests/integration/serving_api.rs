//! The ranking API over HTTP, with a version from a real registry, the real ONNX Runtime and
//! the machine's Redis: requests from the synthetic world are ranked by expected value; every
//! kind of bad request gets a 4xx naming the field.

use std::{net::SocketAddr, sync::Arc};

use adrank_contracts::events::{Click, Event as _, Impression};
use adrank_featurestore::{
    KafkaConfig,
    kafka::{self, admin},
    online::{Reader, Wanted},
};
use adrank_loadtest::world::{World, WorldConfig};
use adrank_serving::{
    ServingConfig,
    api::{AppState, MetricsRender, run},
    clicks::ClickSink,
    impressions::ImpressionLog,
    manager::{ManagerConfig, ModelManager, Refresh},
    rank::RankResponse,
};
use adrank_trainer::model::Architecture;
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::registry::{draft, model_file, registry};

/// The impressions of `request_id` on `topic`, in position order (waits up to 30 s for `n`).
async fn read_impressions(config: &KafkaConfig, topic: &str, request_id: &str, n: usize) -> Vec<Impression> {
    let consumer: BaseConsumer = kafka::client_config(config).set("group.id", "serving-api-test").create().unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), std::time::Duration::from_secs(10)).unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let started = std::time::Instant::now();
    let mut found = Vec::new();
    while found.len() < n && started.elapsed() < std::time::Duration::from_secs(30) {
        if let Some(Ok(message)) = consumer.poll(std::time::Duration::from_millis(200)) {
            let impression = Impression::decode(message.payload().unwrap()).unwrap();
            if impression.request_id == request_id {
                found.push(impression);
            }
        }
    }
    found.sort_by_key(|i| i.position);
    assert_eq!(found.len(), n, "impressions of {request_id} on {topic}");
    found
}

#[tokio::test]
async fn a_dead_broker_costs_the_oldest_impressions_never_a_wait() {
    // Nothing listens on port 1: the producer's queue and then the buffer fill.
    let config = KafkaConfig { brokers: "127.0.0.1:1".into(), ..KafkaConfig::default() };
    let log = ImpressionLog::start(&config, "adrank-impressions", 10).unwrap();
    let started = std::time::Instant::now();
    let impression = Impression::example("i", Default::default());
    for i in 0..200_000 {
        log.log([Impression { impression_id: format!("i-{i}"), ..impression.clone() }]);
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "logging never waits on Kafka");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stats = log.stats();
    assert!(stats.buffered <= 10, "{stats:?}");
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.delivered, 0, "{stats:?}");
}

/// One HTTP/1.1 exchange on a fresh connection: (status, head, body).
pub(crate) async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String, String) {
    http_with(addr, method, path, "", body).await
}

/// [`http`] with extra header lines (`"name: value\r\n"` each).
async fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &[u8]) -> (u16, String, String) {
    try_http(addr, method, path, headers, body).await.expect("the server takes the connection")
}

/// [`http_with`], `None` when nothing listens at `addr` (a server still starting).
pub(crate) async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> Option<(u16, String, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) before reading the whole body; it can then close early.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Some((status, head.to_string(), body.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_world_requests_and_names_every_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let (onnx, stats) =
        model_file(&Architecture::Dlrm { embedding_dim: 8, bottom: vec![16], top: vec![32], wide: true });
    registry.publish(draft(&onnx, &stats, "api test")).await.unwrap();
    registry.change("ctr", alias(1, 0)).await.unwrap();
    let spec = adrank_testkit::spec();
    let config = ServingConfig { max_body_bytes: 200_000, ..ServingConfig::default() };
    let models = Arc::new(ModelManager::start(manager_config(&registry, &config)).await.unwrap());
    let redis = adrank_testkit::redis::TestRedis::new().await;
    let reader = Reader::connect(&redis.config).await.unwrap().with_wanted(Wanted::from_spec(&spec));
    let broker = adrank_testkit::broker::TestBroker::start().await;
    admin::ensure_topics(&broker.config).await.unwrap();
    let topic = broker.config.topics.impressions.name.clone();
    let log = ImpressionLog::start(&broker.config, &topic, 1000).unwrap();
    // The only test in this binary that installs a metrics recorder (it is process-wide).
    let recorder = adrank_serving::metrics::exporter().install_recorder().unwrap();
    let clicks_topic = broker.config.topics.clicks.name.clone();
    let clicks = ClickSink::new(&broker.config, &clicks_topic, std::time::Duration::from_secs(10)).unwrap();
    let state = Arc::new(AppState {
        models,
        reader: Some(reader),
        impressions: Some(log.clone()),
        clicks: Some(clicks),
        metrics: Some(MetricsRender(Arc::new(move || recorder.render()))),
        config: config.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, state, async {
        let _ = stopped.await;
    }));

    assert_eq!(http(addr, "GET", "/healthz", b"").await.0, 200);
    let (status, _, openapi) = http(addr, "GET", "/openapi.json", b"").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&openapi).unwrap()["openapi"], "3.1.0");
    let (status, _, body) = http(addr, "GET", "/readyz", b"").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"version\":1"), "{body}");

    let mut world = World::new(WorldConfig { users: 500, advertisers: 50, ads: 400, ..WorldConfig::default() });
    let next = world.next_request();
    let mut body = serde_json::to_value(world.rank_request(&next)).unwrap();
    assert_eq!(body["top_k"], 5, "the world asks for the slots it shows");
    body["top_k"] = serde_json::Value::Null;
    let candidates = body["candidates"].as_array().unwrap().len();
    body["request_id"] = "no-top-k".into();
    let (status, _, text) = http(addr, "POST", "/v1/rank", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let response: RankResponse = serde_json::from_str(&text).unwrap();
    assert!(candidates > config.slots as usize, "the test needs more candidates than slots");
    assert_eq!(response.ranked.len(), config.slots as usize, "without top_k, the slots the product shows");
    assert!(response.ranked.iter().all(|r| r.impression_id.is_some()));
    assert_eq!((response.model.name.as_str(), response.model.version), ("ctr", 1));
    assert!(!response.degraded, "Redis answered: not degraded");
    assert!(response.ranked.windows(2).all(|w| w[0].expected_value >= w[1].expected_value), "ranked by expected value");
    assert!(response.ranked.iter().all(|r| (0.0..=1.0).contains(&r.pctr) && r.expected_value == r.pctr * r.bid));
    assert!(response.timing.total_ms >= response.timing.inference_ms, "{:?}", response.timing);

    body["top_k"] = 5.into();
    body["request_id"] = "top-five".into();
    let (status, _, text) = http(addr, "POST", "/v1/rank", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let top = serde_json::from_str::<RankResponse>(&text).unwrap();
    assert_eq!(top.ranked.len(), 5);

    // The served top five reach the impressions topic with the features they were scored from.
    let logged = read_impressions(&broker.config, &topic, "top-five", 5).await;
    for (served, logged) in top.ranked.iter().zip(&logged) {
        assert_eq!((&logged.ad_id, logged.position as u32), (&served.ad_id, served.position));
        assert_eq!(Some(&logged.impression_id), served.impression_id.as_ref());
        assert_eq!(logged.model_version, "1");
        // The impression's score is the prediction where it was shown.
        let at_slot = served.shown_pctr.expect("a shown slot's prediction at its position");
        assert!((logged.score - at_slot).abs() < 1e-9, "{} vs {at_slot}", logged.score);
        assert_eq!(logged.features.get("bid"), Some(&adrank_contracts::events::RawValue::Num(served.bid)));
        assert!(logged.features.contains_key("surface") && logged.features.contains_key("user_id"));
        assert!(!logged.features.contains_key("position"), "the slot is the impression's, not a logged feature");
    }
    assert_eq!(log.stats().dropped, 0);
    // The top slot's is its ranking score; lower slots were scored again with their position
    // (the test model's position embedding is random, so each slot's prediction differs).
    assert_eq!(top.ranked[0].shown_pctr, Some(top.ranked[0].pctr));
    assert!(
        top.ranked[1..].iter().all(|r| r.shown_pctr.is_some_and(|p| (p - r.pctr).abs() > 1e-7)),
        "{:?}",
        top.ranked
    );

    // A caller reusing its request id, asking for more than the slots: the shown slots get ids
    // of their own, the rest none, and only the slots are logged.
    body["top_k"] = 8.into();
    let (status, _, text) = http(addr, "POST", "/v1/rank", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let again = serde_json::from_str::<RankResponse>(&text).unwrap();
    assert_eq!(again.ranked.len(), 8);
    assert!(
        again.ranked[5..].iter().all(|r| r.impression_id.is_none() && r.shown_pctr.is_none()),
        "past the slots: not shown"
    );
    let both = read_impressions(&broker.config, &topic, "top-five", 10).await;
    let ids: std::collections::HashSet<&str> = both.iter().map(|i| i.impression_id.as_str()).collect();
    assert_eq!(ids.len(), 10, "a reused request id never reuses an impression id: {ids:?}");
    for served in &again.ranked[..5] {
        assert!(ids.contains(served.impression_id.as_deref().unwrap()));
    }

    // A click on the top impression, over HTTP, reaches the clicks topic under its key.
    let click = Click::on(&logged[0], "c-1".into(), logged[0].event_time_ms + 1000);
    let (status, _, text) = http(addr, "POST", "/v1/events/click", &click.encode()).await;
    assert_eq!(status, 202, "{text}");
    let consumer: BaseConsumer = kafka::client_config(&broker.config).set("group.id", "clicks-test").create().unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..broker.config.topics.clicks.partitions.get() as i32 {
        assignment.add_partition_offset(&clicks_topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let started = std::time::Instant::now();
    let mut received = None;
    while received.is_none() && started.elapsed() < std::time::Duration::from_secs(30) {
        if let Some(Ok(message)) = consumer.poll(std::time::Duration::from_millis(200)) {
            received = Some((Click::decode(message.payload().unwrap()).unwrap(), message.key().map(<[u8]>::to_vec)));
        }
    }
    let (received, key) = received.expect("the click reached Kafka");
    assert_eq!(received, click);
    assert_eq!(key.as_deref(), Some(click.impression_id.as_bytes()), "keyed by its impression");
    let mut bad = serde_json::to_value(&click).unwrap();
    bad["event_time_ms"] = (-5).into();
    let (status, _, text) = http(addr, "POST", "/v1/events/click", bad.to_string().as_bytes()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("event_time_ms"), "{text}");
    let tomorrow = adrank_contracts::events::now_ms() + 86_400_000;
    bad["event_time_ms"] = tomorrow.into();
    let (status, _, text) = http(addr, "POST", "/v1/events/click", bad.to_string().as_bytes()).await;
    assert_eq!(status, 400, "a click a day ahead of the clock: {text}");
    assert!(text.contains("ahead of the receiving clock"), "{text}");

    // Redis stalls (CLIENT PAUSE: the real server stops answering for 600 ms): the request
    // still answers within its deadline, with the spec's defaults, marked degraded.
    let client = redis::Client::open(redis.config.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(600).arg("ALL").query_async(&mut connection).await.unwrap();
    let mut slow = body.clone();
    slow["deadline_ms"] = 200.into();
    let started = std::time::Instant::now();
    let (status, _, text) = http(addr, "POST", "/v1/rank", slow.to_string().as_bytes()).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{text}");
    let degraded: RankResponse = serde_json::from_str(&text).unwrap();
    assert!(degraded.degraded, "{text:.300}");
    assert!(took < std::time::Duration::from_millis(400), "answered in {took:?} despite Redis stalling");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    // Bad requests: 400 with the field named, never a 5xx.
    let bad = |mutate: &dyn Fn(&mut serde_json::Value)| {
        let mut b = body.clone();
        mutate(&mut b);
        b.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), ""),
        (bad(&|b| b["candidates"][0]["bid"] = "cheap".into()), "candidates[0].bid"),
        (bad(&|b| b["candidates"][1]["ad_id"] = b["candidates"][0]["ad_id"].clone()), "candidates[1].ad_id"),
        (bad(&|b| b["candidates"] = serde_json::json!([])), "candidates"),
        (bad(&|b| b["candidates"][2]["bid"] = (-1.0).into()), "candidates[2].bid"),
        (bad(&|b| b["top_k"] = 0.into()), "top_k"),
        (bad(&|b| b["surprise"] = 1.into()), ""),
        (bad(&|b| b["user_id"] = "".into()), "user_id"),
        (bad(&|b| b["context"]["event_time_ms"] = tomorrow.into()), "context.event_time_ms"),
        // Positional arrays in place of objects: serde's derive read them as valid.
        (bad(&|b| b["candidates"][0] = serde_json::json!(["a-x", "v-x", 1.0])), "candidates[0]"),
        (bad(&|b| b["context"] = serde_json::json!(["feed", 0])), "context"),
    ];
    for (request, field) in cases {
        let (status, _, text) = http(addr, "POST", "/v1/rank", request.as_bytes()).await;
        assert_eq!(status, 400, "{request:.80}: {text}");
        let error: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["error"]["kind"], "invalid_request", "{text}");
        if !field.is_empty() {
            assert_eq!(error["error"]["field"], field, "{text}");
        }
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    }
    let huge = vec![b' '; 300_000];
    let (status, _, text) = http(addr, "POST", "/v1/rank", &huge).await;
    assert_eq!(status, 413, "{text:.200}");
    let error: serde_json::Value = serde_json::from_str(&text).expect("a 413 has the JSON error shape");
    assert_eq!(error["error"]["kind"], "payload_too_large", "{text}");
    // The same without a declared length: the limit holds on what arrives.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /v1/rank HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(format!("{:x}\r\n", huge.len()).as_bytes()).await;
    let _ = stream.write_all(&huge).await;
    let _ = stream.write_all(b"\r\n0\r\n\r\n").await;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response:.300}");
    assert!(response.contains("\"payload_too_large\""), "{response:.300}");
    // A body that is not JSON by its media type is refused, with the JSON error shape.
    let valid = body.to_string();
    for media in ["text/plain", "application/x-www-form-urlencoded"] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/rank HTTP/1.1\r\nhost: test\r\ncontent-type: {media}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            valid.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(valid.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 415"), "{media}: {response:.300}");
        assert!(response.contains("\"unsupported_media_type\""), "{response}");
    }

    // Requests by route and status, stage times, batch sizes.
    let (status, _, metrics) = http(addr, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    // The recorder is process-wide and other tests run beside this one: at least these.
    let value = |series: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{series}:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("adrank_serving_requests_total{route=\"rank\",status=\"200\"}") >= 2.0);
    assert!(value("adrank_serving_requests_total{route=\"rank\",status=\"400\"}") >= 11.0);
    assert!(value("adrank_serving_requests_total{route=\"click\",status=\"202\"}") >= 1.0);
    // Redis's stall above, counted by its reason.
    assert!(value("adrank_serving_degraded_total{reason=\"timeout\"}") >= 1.0);
    for name in ["adrank_serving_stage_seconds", "adrank_serving_batch_rows", "adrank_serving_in_flight_requests"] {
        assert!(metrics.contains(name), "{name} not in:\n{metrics}");
    }

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

pub(crate) fn manager_config(registry: &adrank_registry::Registry, serving: &ServingConfig) -> ManagerConfig {
    ManagerConfig {
        registry: registry.clone(),
        name: "ctr".into(),
        follow: "production".into(),
        spec: adrank_testkit::spec(),
        ort: adrank_testkit::onnxruntime(),
        serving: serving.clone(),
        also: Vec::new(),
    }
}

pub(crate) fn alias(version: u64, seq: u64) -> adrank_registry::Change {
    adrank_registry::Change {
        expected_seq: seq,
        set: vec![("production".into(), Some(version))],
        by: "test".into(),
        reason: "test".into(),
    }
}

/// Serves `models` on a free loopback port until the test ends; no clicks, no metrics.
pub(crate) async fn serve(
    models: Arc<ModelManager>,
    reader: Option<Reader>,
    impressions: Option<ImpressionLog>,
    config: ServingConfig,
) -> SocketAddr {
    let state = Arc::new(AppState { models, reader, impressions, clicks: None, metrics: None, config });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(run(listener, state, std::future::pending()));
    addr
}

pub(crate) fn body(world: &mut World) -> String {
    let next = world.next_request();
    serde_json::to_string(&world.rank_request(&next)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_swaps_in_under_traffic_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let architecture = Architecture::Dlrm { embedding_dim: 8, bottom: vec![16], top: vec![32], wide: true };
    let (onnx, stats) = model_file(&architecture);
    registry.publish(draft(&onnx, &stats, "v1")).await.unwrap();
    registry.change("ctr", alias(1, 0)).await.unwrap();
    let config = ServingConfig::default();
    let models = Arc::new(ModelManager::start(manager_config(&registry, &config)).await.unwrap());
    let addr = serve(Arc::clone(&models), None, None, config).await;

    let mut world = World::new(WorldConfig { users: 500, advertisers: 50, ads: 400, ..WorldConfig::default() });
    let bodies: Arc<Vec<String>> = Arc::new((0..50).map(|_| body(&mut world)).collect());
    // Traffic before, during and after the swap, from four concurrent clients, each until it
    // has seen a few answers from the new version.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let bodies = Arc::clone(&bodies);
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut after = 0;
                for i in 0..2_000 {
                    let body = &bodies[(c * 13 + i) % bodies.len()];
                    let (status, _, text) = http(addr, "POST", "/v1/rank", body.as_bytes()).await;
                    let version = serde_json::from_str::<RankResponse>(&text).map(|r| r.model.version).ok();
                    after += usize::from(version == Some(2));
                    answers.push((status, version, text));
                    if after >= 5 {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Another model (another seed) as version 2, promoted: the manager loads, warms, swaps.
    let shape = adrank_trainer::model::InputShape::of(&adrank_testkit::spec());
    let other = adrank_trainer::onnx::export(&adrank_trainer::model::Model::new(&architecture, &shape, 0.02, 9), &[]);
    registry.publish(draft(&other, &stats, "v2")).await.unwrap();
    registry.change("ctr", alias(2, 1)).await.unwrap();
    assert_eq!(models.refresh().await.unwrap(), Refresh::Swapped { from: 1, to: 2 });
    for client in clients {
        let answers = client.await.unwrap();
        for (status, _, text) in &answers {
            assert_eq!(*status, 200, "no request fails during a swap: {text}");
        }
        // Each client sees version 1, then 2, never back.
        let versions: Vec<u64> = answers.iter().filter_map(|a| a.1).collect();
        assert_eq!(versions.len(), answers.len());
        assert!(versions.windows(2).all(|w| w[0] <= w[1]), "1s then 2s: {versions:?}");
        assert_eq!((versions[0], versions[versions.len() - 1]), (1, 2), "{versions:?}");
    }
    assert_eq!(models.loaded(), vec![2], "the old version serves no more (it is kept only as the fallback)");

    // Pinning: a loaded version answers, an unloaded one is 404, a bad header 400.
    let request = body(&mut world);
    let pinned = |v: &'static str| format!("x-adrank-model-version: {v}\r\n");
    assert_eq!(http_with(addr, "POST", "/v1/rank", &pinned("2"), request.as_bytes()).await.0, 200);
    let (status, _, text) = http_with(addr, "POST", "/v1/rank", &pinned("1"), request.as_bytes()).await;
    assert_eq!(status, 404, "{text}");
    assert_eq!(http_with(addr, "POST", "/v1/rank", &pinned("two"), request.as_bytes()).await.0, 400);

    // A version for another feature spec is refused once, remembered, and 2 serves on.
    let mut broken = draft(&other, &stats, "v3, another spec");
    broken.spec_version = "f".repeat(64);
    registry.publish(broken).await.unwrap();
    registry.change("ctr", alias(3, 2)).await.unwrap();
    assert!(matches!(models.refresh().await.unwrap(), Refresh::Refused { version: 3, current: 2, .. }));
    assert_eq!(models.refresh().await.unwrap(), Refresh::Unchanged);

    // A version that cannot be read for now (an I/O error, not a bad file) is tried again at
    // the next refresh; it was refused until the alias moved before.
    let third = adrank_trainer::onnx::export(&adrank_trainer::model::Model::new(&architecture, &shape, 0.02, 11), &[]);
    let v4 = registry.publish(draft(&third, &stats, "v4")).await.unwrap();
    let file = dir.path().join("registry").join(&v4.onnx.path);
    let aside = file.with_extension("aside");
    std::fs::rename(&file, &aside).unwrap();
    // A link to itself: opening it fails with ELOOP, an I/O error the object store reports.
    std::os::unix::fs::symlink(&file, &file).unwrap();
    registry.change("ctr", alias(4, 3)).await.unwrap();
    let refresh = models.refresh().await.unwrap();
    assert!(matches!(refresh, Refresh::Retrying { version: 4, current: 2, failures: 1, .. }), "{refresh:?}");
    std::fs::remove_file(&file).unwrap();
    std::fs::rename(&aside, &file).unwrap();
    assert_eq!(models.refresh().await.unwrap(), Refresh::Swapped { from: 2, to: 4 });
    let (status, _, text) = http(addr, "POST", "/v1/rank", request.as_bytes()).await;
    let answer: RankResponse = serde_json::from_str(&text).unwrap();
    assert_eq!((status, answer.model.version), (200, 4));
    assert!(answer.degraded, "without an online store every answer is degraded, never an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_its_in_flight_places_the_server_sheds_with_429() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let (onnx, stats) =
        model_file(&Architecture::Dlrm { embedding_dim: 8, bottom: vec![16], top: vec![32], wide: true });
    registry.publish(draft(&onnx, &stats, "admission")).await.unwrap();
    registry.change("ctr", alias(1, 0)).await.unwrap();
    // One place and no waiting: of many simultaneous requests, most must be refused at once.
    let config = ServingConfig { max_in_flight: 1, min_in_flight: 1, admission_wait_ms: 0, ..ServingConfig::default() };
    let models = Arc::new(ModelManager::start(manager_config(&registry, &config)).await.unwrap());
    let addr = serve(models, None, None, config).await;
    let mut world = World::new(WorldConfig { users: 500, advertisers: 50, ads: 400, ..WorldConfig::default() });
    let sends: Vec<_> = (0..40)
        .map(|_| {
            let body = body(&mut world);
            tokio::spawn(async move { http(addr, "POST", "/v1/rank", body.as_bytes()).await })
        })
        .collect();
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.unwrap());
    }
    let refused: Vec<_> = answers.iter().filter(|(status, _, _)| *status == 429).collect();
    assert!(answers.iter().all(|(status, _, _)| *status == 200 || *status == 429), "only 200 or 429");
    assert!(answers.iter().any(|(status, _, _)| *status == 200), "the place served someone");
    assert!(!refused.is_empty(), "40 at once through one place: some must be shed");
    let (_, head, body) = refused[0];
    assert!(head.to_lowercase().contains("retry-after: 1"), "{head}");
    assert!(body.contains("\"overloaded\"") && body.contains("retry later"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_references_keep_their_versions_loaded_and_pinnable() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let (onnx, stats) =
        model_file(&Architecture::Dlrm { embedding_dim: 8, bottom: vec![16], top: vec![32], wide: true });
    for reason in ["v1", "v2", "v3"] {
        registry.publish(draft(&onnx, &stats, reason)).await.unwrap();
    }
    let set = |seq: u64, set: Vec<(&str, Option<u64>)>| adrank_registry::Change {
        expected_seq: seq,
        set: set.into_iter().map(|(a, v)| (a.to_string(), v)).collect(),
        by: "test".into(),
        reason: "test".into(),
    };
    registry.change("ctr", set(0, vec![("production", Some(1)), ("candidate", Some(2))])).await.unwrap();
    let config = ServingConfig::default();
    // `shadow` does not exist: it loads nothing, and is no error.
    let manager =
        ManagerConfig { also: vec!["candidate".into(), "shadow".into()], ..manager_config(&registry, &config) };
    let models = Arc::new(ModelManager::start(manager).await.unwrap());
    assert_eq!(models.loaded(), [1, 2]);
    assert_eq!(models.extra(), [("candidate".to_string(), 2)].into());
    let addr = serve(Arc::clone(&models), None, None, config).await;

    let mut world = World::new(WorldConfig { users: 500, advertisers: 50, ads: 400, ..WorldConfig::default() });
    let request = body(&mut world);
    let version_of = |text: &str| serde_json::from_str::<RankResponse>(text).unwrap().model.version;
    let (status, _, text) = http(addr, "POST", "/v1/rank", request.as_bytes()).await;
    assert_eq!((status, version_of(&text)), (200, 1), "{text}");
    let (status, _, text) =
        http_with(addr, "POST", "/v1/rank", "x-adrank-model-version: 2\r\n", request.as_bytes()).await;
    assert_eq!((status, version_of(&text)), (200, 2), "the candidate can be pinned: {text}");

    // The candidate moves: its new version loads, the old one is unloaded.
    registry.change("ctr", set(1, vec![("candidate", Some(3))])).await.unwrap();
    assert_eq!(models.refresh().await.unwrap(), Refresh::Unchanged, "production did not move");
    assert_eq!(models.loaded(), [1, 3]);
    let (status, _, text) =
        http_with(addr, "POST", "/v1/rank", "x-adrank-model-version: 2\r\n", request.as_bytes()).await;
    assert_eq!(status, 404, "version 2 is no longer loaded: {text}");

    // The candidate is promoted and its alias removed: one version remains.
    registry.change("ctr", set(2, vec![("production", Some(3)), ("candidate", None)])).await.unwrap();
    assert_eq!(models.refresh().await.unwrap(), Refresh::Swapped { from: 1, to: 3 });
    assert_eq!(models.loaded(), [3]);
    assert!(models.extra().is_empty());
}

/// Two replicas follow one rollout from the registry: every user gets, on both, the version of
/// the arm the rollout's salted hash puts them in, and the reply names the arm; the shadow step
/// serves everyone production; an abort sends everyone back and unloads the candidate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_route_every_user_to_the_same_rollout_arm() {
    use adrank_registry::{Action, Arm, Decision};
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let (onnx, stats) =
        model_file(&Architecture::Dlrm { embedding_dim: 8, bottom: vec![16], top: vec![32], wide: true });
    for reason in ["v1", "v2"] {
        registry.publish(draft(&onnx, &stats, reason)).await.unwrap();
    }
    registry.change("ctr", alias(1, 0)).await.unwrap();
    let decision = |seq: u64| Decision {
        expected_seq: seq,
        by: "test".into(),
        reason: "test".into(),
        figures: Default::default(),
    };
    let shadow = registry.start_rollout("ctr", 2, vec![0, 50, 100], decision(0)).await.unwrap();

    // Every request of the shadow step is copied to the candidate.
    let config = ServingConfig { shadow_sample: 1.0, shadow_max_in_flight: 64, ..ServingConfig::default() };
    let broker = adrank_testkit::broker::TestBroker::start().await;
    admin::ensure_topics(&broker.config).await.unwrap();
    let topic = broker.config.topics.impressions.name.clone();
    let log = ImpressionLog::start(&broker.config, &topic, 1000).unwrap();
    let mut replicas = Vec::new();
    for replica in 0..2 {
        let models = Arc::new(ModelManager::start(manager_config(&registry, &config)).await.unwrap());
        let impressions = (replica == 0).then(|| log.clone());
        replicas.push((Arc::clone(&models), serve(models, None, impressions, config.clone()).await));
    }
    let mut world = World::new(WorldConfig { users: 5_000, advertisers: 50, ads: 400, ..WorldConfig::default() });
    let requests: Vec<String> = (0..60).map(|_| body(&mut world)).collect();
    let user_of =
        |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap()["user_id"].as_str().unwrap().to_string();
    // Each reply's (version, arm), from each replica, for every request.
    let served = |replicas: Vec<(Arc<ModelManager>, SocketAddr)>, requests: Vec<String>| async move {
        let mut answers = Vec::new();
        for request in &requests {
            let mut per_replica = Vec::new();
            for (_, addr) in &replicas {
                let (status, _, text) = http(*addr, "POST", "/v1/rank", request.as_bytes()).await;
                assert_eq!(status, 200, "{text}");
                let model = serde_json::from_str::<RankResponse>(&text).unwrap().model;
                per_replica.push((model.version, model.arm));
            }
            answers.push(per_replica);
        }
        answers
    };

    // Shadow: the candidate is loaded, nobody is served by it.
    assert!(replicas.iter().all(|(m, _)| m.loaded() == [1, 2]));
    for answer in served(replicas.clone(), requests.clone()).await {
        assert_eq!(answer, [(1, Some(Arm::Production)); 2]);
    }
    // Each was scored again by the candidate after its reply. Both versions are one model: the
    // same scores (the candidate's own transforms, its own batcher), so the same top slots.
    let started = std::time::Instant::now();
    while replicas[0].0.shadow().stats().compared < requests.len() as u64 {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", replicas[0].0.shadow().stats());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let stats = replicas[0].0.shadow().stats();
    assert_eq!((stats.rollout, stats.agreement()), (shadow.id, Some(1.0)));
    assert!(stats.psi().abs() < 1e-9, "{stats:?}");
    // The candidate's scores ride with the impressions the reply showed.
    let first =
        serde_json::from_str::<serde_json::Value>(&requests[0]).unwrap()["request_id"].as_str().unwrap().to_string();
    for impression in read_impressions(&broker.config, &topic, &first, config.slots as usize).await {
        assert_eq!(impression.shadow_score, Some(impression.score), "{impression:?}");
        assert_eq!(impression.rollout.map(|r| (r.id, r.arm)), Some((shadow.id, "production".to_string())));
    }

    // 50%: both replicas, after their next refresh, agree with the rollout's own split.
    let half = registry.act_on_rollout("ctr", Action::Advance, decision(shadow.seq)).await.unwrap();
    for (models, _) in &replicas {
        models.refresh().await.unwrap();
        assert_eq!(models.rollout().map(|r| r.weight()), Some(50));
    }
    let answers = served(replicas.clone(), requests.clone()).await;
    let mut arms = [0, 0];
    for (request, answer) in requests.iter().zip(&answers) {
        let user = user_of(request);
        let expected = (half.version_for(&user), Some(half.arm(&user)));
        assert_eq!(answer, &[expected; 2], "user {user}");
        arms[usize::from(half.arm(&user) == Arm::Candidate)] += 1;
    }
    assert!(arms[0] > 10 && arms[1] > 10, "both arms serve users: {arms:?}");
    // The logged impressions carry the rollout, the arm and the version that scored them.
    for arm in [Arm::Production, Arm::Candidate] {
        let request = requests.iter().find(|r| half.arm(&user_of(r)) == arm).unwrap();
        // A request id of its own: the requests above were logged under theirs.
        let mut request: serde_json::Value = serde_json::from_str(request).unwrap();
        request["request_id"] = format!("arm-{}", arm.as_str()).into();
        let (_, _, text) = http(replicas[0].1, "POST", "/v1/rank", request.to_string().as_bytes()).await;
        let reply = serde_json::from_str::<RankResponse>(&text).unwrap();
        let shown = reply.ranked.iter().filter(|r| r.impression_id.is_some()).count();
        for impression in read_impressions(&broker.config, &topic, &reply.request_id, shown).await {
            let tag = impression.rollout.expect("a rollout tag");
            assert_eq!((tag.id, tag.arm.as_str()), (half.id, arm.as_str()));
            assert_eq!(impression.model_version, reply.model.version.to_string());
        }
    }

    // Aborted: everyone is back on production, with no arm, and the candidate is unloaded.
    registry.act_on_rollout("ctr", Action::RollBack, decision(half.seq)).await.unwrap();
    for (models, _) in &replicas {
        models.refresh().await.unwrap();
        assert_eq!((models.rollout(), models.loaded()), (None, vec![1]));
    }
    for answer in served(replicas.clone(), requests.clone()).await {
        assert_eq!(answer, [(1, None); 2]);
    }
}

/// The admin API: off without a token; with one, a request without it, with a wrong one, or with
/// a body that is not the documented object changes nothing and gets 401 / 400; the operations
/// steer the rollout and this replica follows at once; fuzzed bodies never get a server error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_steers_rollouts_only_with_the_token() {
    use adrank_serving::admin::AdminToken;
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let (onnx, stats) = model_file(&Architecture::Logistic);
    for reason in ["v1", "v2"] {
        registry.publish(draft(&onnx, &stats, reason)).await.unwrap();
    }
    registry.change("ctr", alias(1, 0)).await.unwrap();

    let off = ServingConfig::default();
    let models = Arc::new(ModelManager::start(manager_config(&registry, &off)).await.unwrap());
    let addr = serve(models, None, None, off).await;
    let (status, _, text) = http(addr, "GET", "/admin/rollout", b"").await;
    assert_eq!(status, 404, "no token configured: {text}");

    let config = ServingConfig { admin_token: AdminToken::new("s3cret-token"), ..ServingConfig::default() };
    let models = Arc::new(ModelManager::start(manager_config(&registry, &config)).await.unwrap());
    let addr = serve(Arc::clone(&models), None, None, config).await;
    let auth = "authorization: Bearer s3cret-token\r\n";
    let start = br#"{"candidate": "2", "plan": [0, 50, 100], "reason": "by hand"}"#;
    for headers in [
        "",
        "authorization: Bearer wrong-token!\r\n",
        "authorization: s3cret-token\r\n",
        "authorization: Bearer s3cret-toke\r\n",
    ] {
        let (status, head, text) = http_with(addr, "POST", "/admin/rollout/start", headers, start).await;
        assert_eq!(status, 401, "{headers:?}: {text}");
        assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    }
    for bad in [
        &b"[\"2\"]"[..],
        b"{\"candidate\": 2}",
        b"{\"candidate\": \"2\", \"x\": 1}",
        b"not json",
        b"{}",
        b"{\"candidate\": \"2\", \"plan\": [0, 50]}",
    ] {
        let (status, _, text) = http_with(addr, "POST", "/admin/rollout/start", auth, bad).await;
        assert!(status == 400 || status == 409, "{}: {status} {text}", String::from_utf8_lossy(bad));
    }
    let (status, _, text) = http_with(addr, "POST", "/admin/rollout/start", auth, br#"{"candidate": "9"}"#).await;
    assert_eq!(status, 404, "{text}");
    assert!(registry.rollout("ctr").await.unwrap().is_none(), "nothing refused changed anything");

    let (status, _, text) = http_with(addr, "POST", "/admin/rollout/start", auth, start).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(models.rollout().map(|r| (r.candidate, r.weight())), Some((2, 0)), "this replica follows at once");
    let (status, _, text) = http_with(addr, "POST", "/admin/rollout/advance", auth, br#"{"expect": 0}"#).await;
    assert_eq!(status, 409, "a stale document: {text}");
    let (status, _, text) = http_with(addr, "POST", "/admin/rollout/advance", auth, b"").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(models.rollout().map(|r| r.weight()), Some(50));
    let (status, _, text) = http_with(addr, "POST", "/admin/rollout/explode", auth, b"").await;
    assert_eq!(status, 404, "{text}");
    let (status, _, text) = http_with(addr, "GET", "/admin/rollout", auth, b"").await;
    assert_eq!(status, 200);
    let document: adrank_registry::Rollout = serde_json::from_str(&text).unwrap();
    assert_eq!((document.weight(), document.changed_by.as_str()), (50, "admin API"));

    // Fuzzed bodies (mutations of valid ones, random bytes): no server error, ever.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let seeds: [&[u8]; 3] = [start, br#"{"expect": 3, "reason": "x"}"#, br#"{"reason": "pause"}"#];
    for _ in 0..300 {
        let mut fuzzed = seeds[(next() % 3) as usize].to_vec();
        for _ in 0..(next() % 4) {
            let at = (next() as usize) % (fuzzed.len() + 1);
            match next() % 3 {
                0 if at < fuzzed.len() => fuzzed[at] = next() as u8,
                1 if at < fuzzed.len() => {
                    fuzzed.remove(at);
                }
                _ => fuzzed.insert(at, b"{}[]\",:0-9e\\"[(next() % 12) as usize]),
            }
        }
        let action = ["start", "pause", "resume", "abort", "advance"][(next() % 5) as usize];
        let (status, _, text) = http_with(addr, "POST", &format!("/admin/rollout/{action}"), auth, &fuzzed).await;
        assert!(status < 500, "{action} {:?}: {status} {text}", String::from_utf8_lossy(&fuzzed));
    }
}
