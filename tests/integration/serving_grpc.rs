//! The ranking API over gRPC, called by a client that is not adrank (Python's grpcio with stubs
//! generated from the proto file, `examples/grpc/rank.py`, which also calls the HTTP API with the
//! standard library) and by adrank's load generator:
//! the same ranking as HTTP for the same request, the same rules and fields in its errors, and
//! shedding with retry pushback when the one admission limit both APIs share is full.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use adrank_featurestore::online::{Reader, Wanted};
use adrank_loadtest::{
    generator::{Api, Arrivals, Progress, RunConfig, run},
    ranking::Ranking,
    world::{World, WorldConfig},
};
use adrank_serving::{
    ServingConfig,
    api::{AppState, Listeners, run_both},
    manager::ModelManager,
    rank::RankResponse,
};
use adrank_trainer::model::Architecture;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::{
    registry::{draft, model_file, registry},
    serving_api::{alias, manager_config},
};

/// Serves both APIs on free loopback ports until the test ends: (HTTP, gRPC).
async fn serve_both(
    models: Arc<ModelManager>,
    reader: Option<Reader>,
    config: ServingConfig,
) -> (SocketAddr, SocketAddr) {
    let state = Arc::new(AppState { models, reader, impressions: None, clicks: None, metrics: None, config });
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    tokio::spawn(run_both(Listeners { http, grpc: Some(grpc) }, state, std::future::pending()));
    addrs
}

/// Runs the Python client on `calls` (HTTP at `http`, gRPC at `grpc`); one list of outcomes per
/// call.
async fn python_client((http, grpc): (SocketAddr, SocketAddr), calls: &Value) -> Vec<Vec<Value>> {
    let root = adrank_testkit::workspace_root();
    let python = root.join(".adrank/tools/bin/python");
    assert!(python.exists(), "{} is missing: run ./dev.sh setup (it installs grpcio there)", python.display());
    let mut child = tokio::process::Command::new(python)
        .arg(root.join("examples/grpc/rank.py"))
        .arg(grpc.to_string())
        .arg(http.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(calls.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "the Python client failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A registry (in `dir`) with one untrained DLRM as `production`, loaded by a manager.
async fn one_version(dir: &std::path::Path, config: &ServingConfig) -> Arc<ModelManager> {
    let registry = registry(dir);
    let (onnx, stats) =
        model_file(&Architecture::Dlrm { embedding_dim: 8, bottom: vec![16], top: vec![32], wide: true });
    registry.publish(draft(&onnx, &stats, "grpc test")).await.unwrap();
    registry.change("ctr", alias(1, 0)).await.unwrap();
    Arc::new(ModelManager::start(manager_config(&registry, config)).await.unwrap())
}

/// A refusal's code and trailers.
fn refusal(outcome: &Value) -> (&str, &str, &str) {
    let trailer = |name: &str| outcome["trailers"][name].as_str().unwrap_or("");
    (outcome["code"].as_str().unwrap_or("OK"), trailer("adrank-error-kind"), trailer("adrank-field"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_gets_the_http_apis_ranking_and_errors_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServingConfig::default();
    let models = one_version(dir.path(), &config).await;
    let redis = adrank_testkit::redis::TestRedis::new().await;
    let reader = Reader::connect(&redis.config).await.unwrap().with_wanted(Wanted::from_spec(&adrank_testkit::spec()));
    let (http_addr, grpc_addr) = serve_both(models, Some(reader), config).await;

    let mut world = World::new(WorldConfig { users: 500, advertisers: 50, ads: 400, ..WorldConfig::default() });
    let next = world.next_request();
    let body = serde_json::to_value(world.rank_request(&next)).unwrap();

    let with = |edit: &dyn Fn(&mut Value)| {
        let mut b = body.clone();
        edit(&mut b);
        b
    };
    let calls = json!([
        { "request": body, "http": true },
        { "request": body },
        { "request": body, "metadata": [["x-adrank-model-version", "1"]] },
        { "request": with(&|b| b["candidates"][1]["bid"] = json!(-1.0)) },
        { "request": with(&|b| { b.as_object_mut().unwrap().remove("context"); }) },
        { "request": with(&|b| b["candidates"][1]["ad_id"] = b["candidates"][0]["ad_id"].clone()) },
        { "request": with(&|b| b["top_k"] = json!(0)) },
        { "request": with(&|b| b["context"]["event_time_ms"] = json!(4_102_444_800_000_i64)) },
        { "request": body, "metadata": [["x-adrank-model-version", "9"]] },
        { "request": body, "metadata": [["x-adrank-model-version", "latest"]] },
        { "request": with(&|b| b["candidates"][1]["bid"] = json!(-1.0)), "http": true },
    ]);
    let outcomes = python_client((http_addr, grpc_addr), &calls).await;
    assert_eq!(outcomes.len(), 11);
    assert_eq!(outcomes[0][0]["status"], 200, "{:?}", outcomes[0]);
    let by_http: RankResponse = serde_json::from_value(outcomes[0][0]["body"].clone()).unwrap();
    let outcomes = &outcomes[1..];

    // The same request ranks the same over both APIs: order, scores, slots.
    for outcome in &outcomes[..2] {
        let reply = &outcome[0]["reply"];
        assert!(reply.is_object(), "{outcome:?}");
        assert_eq!(reply["request_id"], by_http.request_id.as_str());
        assert_eq!(reply["model"]["name"], "ctr");
        // Protobuf's JSON mapping writes 64-bit integers as strings.
        assert_eq!(reply["model"]["version"], "1");
        assert!(reply.get("degraded").is_none(), "Redis answered: not degraded (false is the default, left out)");
        let ranked = reply["ranked"].as_array().unwrap();
        assert_eq!(ranked.len(), by_http.ranked.len());
        for (g, h) in ranked.iter().zip(&by_http.ranked) {
            assert_eq!(g["ad_id"], h.ad_id.as_str());
            assert_eq!(g["pctr"].as_f64().unwrap(), h.pctr, "{}", h.ad_id);
            assert_eq!(g["expected_value"].as_f64().unwrap(), h.expected_value);
            assert_eq!(g.get("position").and_then(Value::as_u64).unwrap_or(0), u64::from(h.position));
            assert_eq!(g["shown_pctr"].as_f64(), h.shown_pctr);
            let id = g["impression_id"].as_str().unwrap();
            assert_ne!(Some(id), h.impression_id.as_deref(), "every reply's impressions have ids of their own");
        }
        assert!(reply["timing"]["total_ms"].as_f64().unwrap() > 0.0);
    }
    let refusals: Vec<_> = outcomes[2..9].iter().map(|o| refusal(&o[0])).collect();
    assert_eq!(
        refusals,
        [
            ("INVALID_ARGUMENT", "invalid_request", "candidates[1].bid"),
            ("INVALID_ARGUMENT", "invalid_request", "context"),
            ("INVALID_ARGUMENT", "invalid_request", "candidates[1].ad_id"),
            ("INVALID_ARGUMENT", "invalid_request", "top_k"),
            ("INVALID_ARGUMENT", "invalid_request", "context.event_time_ms"),
            ("NOT_FOUND", "unknown_model_version", "x-adrank-model-version"),
            ("INVALID_ARGUMENT", "invalid_request", "x-adrank-model-version"),
        ]
    );
    assert!(outcomes[2][0]["details"].as_str().unwrap().contains("non-negative"), "{:?}", outcomes[2]);
    // The HTTP API refuses the same request with the same kind and field.
    let refused = &outcomes[9][0];
    assert_eq!(refused["status"], 400, "{refused:?}");
    assert_eq!(refused["body"]["error"]["kind"], "invalid_request");
    assert_eq!(refused["body"]["error"]["field"], "candidates[1].bid");

    // adrank's own generator over gRPC: protobuf bodies, every reply read back.
    let ranking = Arc::new(Ranking::fixed(&mut world, 20, &Api::Grpc));
    let run_config = RunConfig {
        target: grpc_addr,
        api: Api::Grpc,
        rate: 40.0,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        connections: 4,
        arrivals: Arrivals::Constant,
        timeout: Duration::from_secs(10),
        seed: 7,
    };
    let report = run(&run_config, Arc::clone(&ranking), Arc::new(Progress::default())).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.statuses.keys().collect::<Vec<_>>(), [&200], "{:?}", report.statuses);
    let timings = ranking.take_timings();
    assert_eq!(timings.unparsable, 0);
    assert_eq!(timings.versions.get("ctr/1").copied(), Some(report.statuses[&200]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc_the_shared_admission_limit_sheds_with_retry_pushback() {
    let dir = tempfile::tempdir().unwrap();
    // One place and no waiting: of many simultaneous calls, most must be refused at once.
    let config = ServingConfig { max_in_flight: 1, min_in_flight: 1, admission_wait_ms: 0, ..ServingConfig::default() };
    let models = one_version(dir.path(), &config).await;
    let addrs = serve_both(models, None, config).await;
    let mut world = World::new(WorldConfig { users: 500, advertisers: 50, ads: 400, ..WorldConfig::default() });
    let next = world.next_request();
    let body = serde_json::to_value(world.rank_request(&next)).unwrap();
    let outcomes = python_client(addrs, &json!([{ "request": body, "copies": 40 }])).await;
    let codes: Vec<&str> = outcomes[0].iter().map(|o| refusal(o).0).collect();
    assert!(codes.iter().all(|c| *c == "OK" || *c == "RESOURCE_EXHAUSTED"), "{codes:?}");
    assert!(codes.contains(&"OK"), "the place served someone: {codes:?}");
    let shed = outcomes[0].iter().find(|o| o["code"] == "RESOURCE_EXHAUSTED").expect("40 at once through one place");
    assert_eq!(shed["trailers"]["grpc-retry-pushback-ms"], "1000", "{shed}");
    assert_eq!(shed["trailers"]["adrank-error-kind"], "overloaded", "{shed}");
}
