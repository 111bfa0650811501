//! The ranking API over HTTP, with a version from a real registry, the real ONNX Runtime and
//! the machine's Redis: requests from the synthetic world are ranked by expected value; every
//! kind of bad request gets a 4xx naming the field.

use std::{net::SocketAddr, path::Path, sync::Arc};

use adrank_featurestore::{
    online::{Reader, Wanted},
    spec::FeatureSpec,
};
use adrank_loadtest::world::{World, WorldConfig};
use adrank_serving::{
    ServingConfig,
    api::{AppState, run},
    model::{LoadRequest, LoadedVersion},
    rank::RankResponse,
};
use adrank_trainer::model::Architecture;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::registry::{draft, model_file, registry};

/// One HTTP/1.1 exchange on a fresh connection: (status, head, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
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
    (status, head.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_world_requests_and_names_every_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let (onnx, stats) =
        model_file(&Architecture::Dlrm { embedding_dim: 8, bottom: vec![16], top: vec![32], wide: true });
    let manifest = registry.publish(draft(&onnx, &stats, "api test")).await.unwrap();
    let spec = FeatureSpec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/features.toml")).unwrap();
    let (ort, config) =
        (adrank_testkit::onnxruntime(), ServingConfig { max_body_bytes: 200_000, ..ServingConfig::default() });
    let request = LoadRequest {
        registry: &registry,
        name: "ctr",
        version: manifest.version,
        spec: &spec,
        ort: &ort,
        serving: &config,
    };
    let version = LoadedVersion::load(request).await.unwrap();
    let redis = adrank_testkit::redis::TestRedis::new().await;
    let reader = Reader::connect(&redis.config).await.unwrap().with_wanted(Wanted::from_spec(&spec));
    let state = Arc::new(AppState { version, reader: Some(reader), config: config.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, state, async {
        let _ = stopped.await;
    }));

    assert_eq!(http(addr, "GET", "/healthz", b"").await.0, 200);
    let (status, _, body) = http(addr, "GET", "/readyz", b"").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"version\":1"), "{body}");

    let mut world = World::new(WorldConfig { users: 500, advertisers: 50, ads: 400, ..WorldConfig::default() });
    let next = world.next_request();
    let mut body = serde_json::to_value(world.rank_request(&next)).unwrap();
    let candidates = body["candidates"].as_array().unwrap().len();
    let (status, _, text) = http(addr, "POST", "/v1/rank", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let response: RankResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(response.ranked.len(), candidates);
    assert_eq!((response.model.name.as_str(), response.model.version), ("ctr", 1));
    assert!(!response.degraded, "Redis answered: not degraded");
    assert!(response.ranked.windows(2).all(|w| w[0].expected_value >= w[1].expected_value), "ranked by expected value");
    assert!(response.ranked.iter().all(|r| (0.0..=1.0).contains(&r.pctr) && r.expected_value == r.pctr * r.bid));
    assert!(response.timing.total_ms >= response.timing.inference_ms, "{:?}", response.timing);

    body["top_k"] = 5.into();
    let (status, _, text) = http(addr, "POST", "/v1/rank", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(serde_json::from_str::<RankResponse>(&text).unwrap().ranked.len(), 5);

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
    assert_eq!(http(addr, "POST", "/v1/rank", &huge).await.0, 413);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
