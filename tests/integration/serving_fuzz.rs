//! 100k generated request bodies thrown at the ranking handler (the real router, a real model,
//! the machine's Redis): no panic, no 500, no 5xx except a 504 for a deadline the body set. And
//! the API document and the server are one truth: every body that parses is also judged by the
//! `RankRequest` schema of `serving/openapi.json`; the server must accept what the schema
//! accepts (save for the rules the document lists beyond the schema) and refuse the rest.

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

/// Whether `value` satisfies `schema`, for the JSON Schema keywords the API document uses
/// (`$ref` within the document, `type`, `enum`, `properties`, `required`, `additionalProperties`,
/// `items`, `minItems`, `maxItems`, `minLength`, `maxLength`, `minimum`, `maximum`). A keyword
/// it does not know fails the test, so the document cannot outgrow the checker unnoticed.
fn satisfies(doc: &Value, schema: &Value, value: &Value) -> bool {
    const KNOWN: [&str; 14] = [
        "$ref",
        "type",
        "enum",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "description",
    ];
    let schema = schema.as_object().expect("a schema is an object");
    if let Some(unknown) = schema.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        panic!("the checker does not know the keyword `{unknown}`: teach it");
    }
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = doc.pointer(reference.trim_start_matches('#')).expect("a $ref within the document");
        return satisfies(doc, target, value);
    }
    let is = |kind: &str| match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        // JSON Schema: a number whose fraction is zero (1190.0 included).
        "integer" => value.as_f64().is_some_and(|x| x.fract() == 0.0),
        other => panic!("unknown type {other}"),
    };
    let typed = match schema.get("type") {
        None => true,
        Some(Value::String(kind)) => is(kind),
        Some(Value::Array(kinds)) => kinds.iter().any(|k| is(k.as_str().unwrap())),
        Some(other) => panic!("type {other}"),
    };
    if !typed || schema.get("enum").and_then(Value::as_array).is_some_and(|allowed| !allowed.contains(value)) {
        return false;
    }
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    if let Some(x) = value.as_f64() {
        // Compared as decimals where both are integers (u64::MAX does not fit an f64 exactly).
        let exceeds = |limit: f64, above: bool| match (
            value.as_i64().map(i128::from).or(value.as_u64().map(i128::from)),
            limit.fract() == 0.0,
        ) {
            (Some(n), true) => {
                if above {
                    n > limit as i128
                } else {
                    n < limit as i128
                }
            }
            _ => {
                if above {
                    x > limit
                } else {
                    x < limit
                }
            }
        };
        if bound("minimum").is_some_and(|m| exceeds(m, false)) || bound("maximum").is_some_and(|m| exceeds(m, true)) {
            return false;
        }
    }
    if let Some(text) = value.as_str() {
        let chars = text.chars().count() as f64;
        if bound("minLength").is_some_and(|m| chars < m) || bound("maxLength").is_some_and(|m| chars > m) {
            return false;
        }
    }
    if let Some(items) = value.as_array() {
        let n = items.len() as f64;
        if bound("minItems").is_some_and(|m| n < m) || bound("maxItems").is_some_and(|m| n > m) {
            return false;
        }
        if let Some(item) = schema.get("items")
            && !items.iter().all(|v| satisfies(doc, item, v))
        {
            return false;
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        let required = schema.get("required").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        if required.iter().any(|r| !object.contains_key(r.as_str().unwrap())) {
            return false;
        }
        for (key, v) in object {
            let ok = match (properties.and_then(|p| p.get(key)), schema.get("additionalProperties")) {
                (Some(property), _) => satisfies(doc, property, v),
                (None, Some(Value::Bool(allowed))) => *allowed,
                (None, Some(extra)) => satisfies(doc, extra, v),
                (None, None) => true,
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

/// The rules the document states beyond its schema (`RankRequest`'s description), as the
/// server words them: a schema-valid body may be refused for these and nothing else.
const RULES_BEYOND_THE_SCHEMA: [&str; 6] = [
    "each ad may be ranked once",
    "ids have at most",
    "control character",
    "is empty",
    "evaluation-only",
    "has an empty name",
];

#[test]
fn the_schema_checker_knows_integers_and_bounds() {
    let doc: Value = serde_json::from_str(adrank_serving::api::OPENAPI).unwrap();
    let schema = &doc["components"]["schemas"]["RankRequest"];
    let good = json!({"request_id": "r", "user_id": "u", "context": {"surface": "feed", "event_time_ms": 1190.0},
        "candidates": [{"ad_id": "a", "advertiser_id": "v", "bid": 1}], "top_k": null});
    assert!(satisfies(&doc, schema, &good));
    for (pointer, bad) in [
        ("/top_k", json!(0)),
        ("/top_k", json!(2.5)),
        ("/top_k", json!(u64::MAX)),
        ("/context/event_time_ms", json!(-1)),
        ("/candidates", json!([])),
        ("/candidates/0", json!(["a", "v", 1])),
        ("/request_id", json!("")),
    ] {
        let mut body = good.clone();
        *body.pointer_mut(pointer).unwrap() = bad.clone();
        assert!(!satisfies(&doc, schema, &body), "{pointer} = {bad}");
    }
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

    let doc: Value = serde_json::from_str(adrank_serving::api::OPENAPI).unwrap();
    let schema = &doc["components"]["schemas"]["RankRequest"];
    assert!(satisfies(&doc, schema, &base), "the base request satisfies the document");
    let mut rng = Rng::new(7, 1);
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    let mut judged = [0u32; 2];
    for i in 0..100_000 {
        let body = body(&base, &mut rng);
        let request =
            Request::post("/v1/rank").header("content-type", "application/json").body(Body::from(body.clone()));
        let response = app.clone().oneshot(request.unwrap()).await.unwrap();
        let status = response.status().as_u16();
        *statuses.entry(status).or_default() += 1;
        let text = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let parsed = serde_json::from_slice::<Value>(&body).ok();
        let deadline_set = parsed.as_ref().is_some_and(|b| b.get("deadline_ms").is_some_and(|d| !d.is_null()));
        let show = || {
            format!(
                "body {i} got {status}: {}\nbody: {}",
                String::from_utf8_lossy(&text),
                String::from_utf8_lossy(&body)
            )
        };
        assert!(status < 500 || (status == 504 && deadline_set), "{}", show());
        if let Some(parsed) = parsed {
            let valid = satisfies(&doc, schema, &parsed);
            judged[usize::from(valid)] += 1;
            if valid {
                let message = String::from_utf8_lossy(&text);
                let beyond = status == 400 && RULES_BEYOND_THE_SCHEMA.iter().any(|rule| message.contains(rule));
                assert!(
                    status == 200 || status == 504 || beyond,
                    "the schema accepts it, the server does not: {}",
                    show()
                );
            } else {
                assert_eq!(status, 400, "the schema refuses it, the server does not: {}", show());
            }
        }
    }
    eprintln!("statuses: {statuses:?}; judged by the schema: {} invalid, {} valid", judged[0], judged[1]);
    assert!(judged.iter().all(|&n| n > 1_000), "both kinds judged: {judged:?}");
    assert!(
        statuses.get(&200).is_some_and(|&n| n > 100),
        "some mutated bodies stay valid and are ranked: {statuses:?}"
    );
    assert!(statuses.get(&400).is_some_and(|&n| n > 50_000), "{statuses:?}");
}
