//! 100k generated request bodies thrown at the ranking handler (the real router, a real model,
//! the machine's Redis): no panic, no 500, no 5xx except a 504 for a deadline the body set.

use std::sync::Arc;

use adrank_featurestore::online::{Reader, Wanted};
use adrank_loadtest::world::{World, WorldConfig, rng::Rng};
use adrank_serving::{
    ServingConfig,
    api::{AppState, router},
    manager::ModelManager,
};
use adrank_trainer::model::Architecture;
use axum::{body::Body, http::Request};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::registry::{draft, model_file, registry};

/// Every node of a JSON value, as JSON pointers.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match value {
        Value::Object(map) => map.iter().for_each(|(k, v)| pointers(v, format!("{at}/{k}"), out)),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| pointers(v, format!("{at}/{i}"), out)),
        _ => {}
    }
}

/// A value of a random kind, including the awkward ones.
fn odd_value(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(u64::MAX),
        4 => json!(-1.5e300),
        5 => json!(""),
        6 => json!("\u{0}\u{1b}control"),
        7 => json!("ünïcødé 🦀".repeat(1 + rng.below(40) as usize)),
        8 => json!([]),
        9 => json!({}),
        10 => json!([[[[{"deep": [1, "x", null]}]]]]),
        _ => json!(rng.f64() * 1e6),
    }
}

/// One generated body: a valid request mutated a few times, or raw noise.
fn body(base: &Value, rng: &mut Rng) -> Vec<u8> {
    match rng.below(20) {
        0 => return (0..rng.below(300)).map(|_| rng.below(256) as u8).collect(),
        1 => {
            let text = base.to_string();
            return text.as_bytes()[..rng.below(text.len() as u64) as usize].to_vec();
        }
        2 => {
            // Numbers JSON allows but Rust types cannot hold.
            let text = base.to_string().replacen("\"top_k\":3", "\"top_k\":1e999", 1);
            return text.replacen("\"deadline_ms\":50", "\"deadline_ms\":99999999999", 1).into_bytes();
        }
        _ => {}
    }
    let mut value = base.clone();
    for _ in 0..1 + rng.below(3) {
        let mut all = Vec::new();
        pointers(&value, String::new(), &mut all);
        let at = all[rng.below(all.len() as u64) as usize].clone();
        let (parent, key) = at.rsplit_once('/').unwrap_or(("", ""));
        match rng.below(5) {
            // Replace a node with an odd value.
            0 | 1 => {
                if let Some(node) = value.pointer_mut(&at) {
                    *node = odd_value(rng);
                }
            }
            // Delete a field or an element.
            2 => match value.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(key);
                }
                Some(Value::Array(items)) if !items.is_empty() => {
                    items.remove(key.parse::<usize>().unwrap_or(0).min(items.len() - 1));
                }
                _ => {}
            },
            // Add an unknown field.
            3 => {
                if let Some(Value::Object(map)) = value.pointer_mut(&at) {
                    map.insert("surprise".into(), odd_value(rng));
                }
            }
            // Duplicate a candidate (same ad id twice).
            _ => {
                if let Some(Value::Array(items)) = value.pointer_mut("/candidates")
                    && let Some(first) = items.first().cloned()
                {
                    items.push(first);
                }
            }
        }
    }
    value.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_generated_bodies_get_no_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let (onnx, stats) = model_file(&Architecture::Dlrm { embedding_dim: 4, bottom: vec![8], top: vec![8], wide: true });
    registry.publish(draft(&onnx, &stats, "fuzz")).await.unwrap();
    let change = adrank_registry::Change {
        expected_seq: 0,
        set: vec![("production".into(), Some(1))],
        by: "test".into(),
        reason: "fuzz".into(),
    };
    registry.change("ctr", change).await.unwrap();
    let spec = adrank_testkit::spec();
    let config = ServingConfig { max_body_bytes: 64 * 1024, ..ServingConfig::default() };
    let manager = adrank_serving::manager::ManagerConfig {
        registry: registry.clone(),
        name: "ctr".into(),
        follow: "production".into(),
        spec: spec.clone(),
        ort: adrank_testkit::onnxruntime(),
        serving: config.clone(),
        also: Vec::new(),
    };
    let models = Arc::new(ModelManager::start(manager).await.unwrap());
    let redis = adrank_testkit::redis::TestRedis::new().await;
    let reader = Reader::connect(&redis.config).await.unwrap().with_wanted(Wanted::from_spec(&spec));
    let state =
        Arc::new(AppState { models, reader: Some(reader), impressions: None, clicks: None, metrics: None, config });
    let app = router(state);

    // A small valid request (3 candidates) from the world, as the base of every mutation.
    let mut world =
        World::new(WorldConfig { users: 200, advertisers: 20, ads: 200, candidates: 3, ..WorldConfig::default() });
    let next = world.next_request();
    let mut base = serde_json::to_value(world.rank_request(&next)).unwrap();
    base["top_k"] = 3.into();
    base["deadline_ms"] = 50.into();

    let mut rng = Rng::new(7, 1);
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for i in 0..100_000 {
        let body = body(&base, &mut rng);
        let request =
            Request::post("/v1/rank").header("content-type", "application/json").body(Body::from(body.clone()));
        let response = app.clone().oneshot(request.unwrap()).await.unwrap();
        let status = response.status().as_u16();
        *statuses.entry(status).or_default() += 1;
        let text = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let deadline_set = serde_json::from_slice::<Value>(&body).ok().is_some_and(|b| b.get("deadline_ms").is_some());
        assert!(
            status < 500 || (status == 504 && deadline_set),
            "body {i} got {status}: {}\nbody: {}",
            String::from_utf8_lossy(&text),
            String::from_utf8_lossy(&body)
        );
    }
    eprintln!("statuses: {statuses:?}");
    assert!(
        statuses.get(&200).is_some_and(|&n| n > 100),
        "some mutated bodies stay valid and are ranked: {statuses:?}"
    );
    assert!(statuses.get(&400).is_some_and(|&n| n > 50_000), "{statuses:?}");
}
