//! The README's main command end to end (`adrank demo --quick`, smaller still): history to a
//! real broker, ingest into the real Redis and a training log, train, serve with ONNX Runtime,
//! closed-loop load, and a report that parses.

use std::time::Duration;

use adrank_featurestore::kafka::admin;
use adrank_testkit::{broker::TestBroker, redis::TestRedis, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_whole_chain_and_ends_with_a_report() {
    let _heavy = adrank_testkit::heavy().await;
    let broker = TestBroker::start_persistent().await;
    admin::ensure_topics(&broker.config).await.unwrap();
    let redis = TestRedis::new().await;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_adrank"));
    command.current_dir(workspace_root()).kill_on_drop(true);
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("ADRANK_")) {
        command.env_remove(var);
    }
    let path = |name: &str| dir.path().join(name).display().to_string();
    command
        .envs([
            ("ADRANK_KAFKA__BROKERS", broker.config.brokers.clone()),
            ("ADRANK_KAFKA__CONSUMER_GROUP", "demo-test".into()),
            ("ADRANK_REDIS__URL", redis.config.url.clone()),
            ("ADRANK_REDIS__KEY_PREFIX", redis.config.key_prefix.clone()),
            ("ADRANK_INGEST__TRAINING_LOG", path("log")),
            ("ADRANK_REGISTRY__LOCATION", path("registry")),
            ("ADRANK_WORLD__USERS", "5000".into()),
            ("ADRANK_WORLD__ADS", "1000".into()),
            ("ADRANK_WORLD__ADVERTISERS", "100".into()),
        ])
        .args(["demo", "--quick", "--days", "0.2", "--rate", "50", "--duration", "6", "--report"])
        .arg(&report);
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("the demo took over 5 minutes")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    for banner in ["[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"] {
        assert!(text.contains(banner), "{banner} missing:\n{text}");
    }

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    let run = &json["run"];
    assert_eq!(run["statuses"]["200"], run["measured"], "every measured request answered 200: {run}");
    let versions = json["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{json}");
    assert_eq!(versions[0]["version"], "ctr/1", "the model the demo trained served");
    assert_eq!(versions[0]["requests"], run["measured"]);
    let figure = |key: &str| versions[0][key].as_f64().unwrap_or_else(|| panic!("no {key}: {json}"));
    assert!(figure("oracle_rpm") >= figure("expected_rpm") * 0.99);
    // The same requests ranked by the learnable ceiling and by bid alone, beside the oracle.
    assert!(figure("oracle_rpm") >= figure("ceiling_rpm") * 0.99 && figure("ceiling_rpm") > figure("bid_only_rpm"));
    let by_position = versions[0]["calibration_by_position"].as_array().unwrap();
    assert_eq!(by_position.len(), 5, "one calibration row per shown slot: {by_position:?}");
    let slots: u64 = by_position.iter().map(|c| c["slots"].as_u64().unwrap()).sum();
    assert_eq!(Some(slots), versions[0]["impressions"].as_u64(), "every shown slot counted once");
    assert_eq!(versions[0]["calibration_by_decile"].as_array().unwrap().len(), 10);
    assert!(json["clicks"]["accepted"].as_u64().unwrap() > 0, "the world clicked and the server took the clicks");
    // Features came from Redis: a reply answered from defaults (Redis slower than half the
    // deadline: a CI machine running every test at once) may happen, but not as a rule.
    let (degraded, replies) =
        (json["server"]["degraded"].as_u64().unwrap(), json["server"]["replies"].as_u64().unwrap());
    assert!(degraded * 50 <= replies, "{degraded} of {replies} replies were degraded: {}", json["server"]);
    let page = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(page.contains("Business figures by model version") && page.matches("<svg").count() >= 2);
}
