//! The README's main command end to end (`adrank demo --quick`, smaller still): history to a
//! real broker, ingest into the real Redis and a training log, the retraining loop's first
//! cycle, then closed-loop traffic while the live ingester, `retrain --loop`, `rollout
//! control` and the dashboard run; the injected bad candidate is stopped online, and the
//! report's figures agree with the registry's records. An unoptimised build on two cores
//! beside the rest of the suite trains a candidate in minutes, so this run ends once the bad
//! one is stopped (`--promotions 0`); a retrained candidate's way through shadow and canary to
//! production on live traffic is `rollout_loop`'s test, and the full demo's figures are in
//! BENCHMARKS.md.

use std::time::Duration;

use adrank_featurestore::kafka::admin;
use adrank_registry::{PRODUCTION, Registry, RegistryConfig, rollout::Status};
use adrank_testkit::{broker::TestBroker, redis::TestRedis, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_whole_loop_and_stops_the_bad_candidate() {
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
            ("ADRANK_STACK__STATE_DIR", path("state")),
            ("ADRANK_WORLD__USERS", "5000".into()),
            ("ADRANK_WORLD__ADS", "1000".into()),
            ("ADRANK_WORLD__ADVERTISERS", "100".into()),
            // More clicks per impression: the arms' analysis decides in fewer seconds.
            ("ADRANK_WORLD__MEAN_CTR", "0.05".into()),
            // Half the demo's traffic per simulated hour: half the examples per training window.
            ("ADRANK_WORLD__REQUESTS_PER_HOUR", "1000".into()),
            ("ADRANK_TRAINING__EPOCHS", "1".into()),
            // A one-epoch model of a small world is judged on a wider calibration band (the
            // gates have tests of their own); the first cycle must make a production.
            ("ADRANK_RETRAIN__GATES__CALIBRATION_MIN", "0.5".into()),
            ("ADRANK_RETRAIN__GATES__CALIBRATION_MAX", "2.0".into()),
            ("ADRANK_SERVING__SHADOW_SAMPLE", "0.5".into()),
        ])
        .args([
            "demo",
            "--quick",
            "--days",
            "1.5",
            "--rate",
            "60",
            "--duration",
            "240",
            "--promotions",
            "0",
            "--report",
        ])
        .arg(&report);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("the demo took over 10 minutes")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    let logs = || {
        ["ingest", "retrain", "rollout", "xray"]
            .map(|p| {
                format!(
                    "--- {p}:\n{}",
                    std::fs::read_to_string(dir.path().join(format!("state/demo/{p}.log"))).unwrap_or_default()
                )
            })
            .join("\n")
    };
    assert!(output.status.success(), "{text}\n{}", logs());
    for banner in ["[1/7]", "[2/7]", "[3/7]", "[4/7]", "[5/7]", "[6/7]", "[7/7]"] {
        assert!(text.contains(banner), "{banner} missing:\n{text}");
    }

    // The registry's records: the first cycle's version in production, the bad one stopped.
    let registry = Registry::open(&RegistryConfig { location: path("registry") }).unwrap();
    let history = registry.rollout_history("ctr").await.unwrap();
    let newest = |id: u64| history.iter().filter(|r| r.id == id).max_by_key(|r| r.seq).unwrap().clone();
    let ids: std::collections::BTreeSet<u64> = history.iter().map(|r| r.id).collect();
    let ended: Vec<_> = ids.iter().map(|id| newest(*id)).collect();
    let versions = registry.versions("ctr").await.unwrap();
    let bad = versions.iter().find(|m| m.reason.contains("bad candidate")).expect("the bad candidate was published");
    let bad = ended.iter().find(|r| r.candidate == bad.version).unwrap_or_else(|| panic!("{history:#?}"));
    assert_eq!(bad.status, Status::RolledBack, "the bad candidate was stopped: {bad:?}");
    assert!(bad.reason.starts_with("analysis failed"), "{}", bad.reason);
    let production = registry.state("ctr").await.unwrap().aliases[PRODUCTION];
    assert_ne!(production, bad.candidate, "the bad candidate never became production");
    let first = versions.iter().find(|m| m.reason.contains("retrain cycle 1")).expect("the first cycle's version");
    assert!(production >= first.version, "production is the first cycle's or a later one");

    // The report says the same, with the business figures of the final production.
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    let verdict = json["verdict"].as_str().unwrap();
    assert!(verdict.starts_with("verdict: the whole loop ran"), "{verdict}");
    assert!(verdict.contains(&format!("the bad candidate v{} was stopped at the", bad.candidate)), "{verdict}");
    let timeline = json["timeline"].as_array().unwrap();
    for kind in ["version", "cycle", "rollout", "injected"] {
        assert!(timeline.iter().any(|e| e["kind"] == kind), "no {kind} in the timeline: {timeline:#?}");
    }
    let decisions = timeline.iter().filter(|e| e["kind"] == "rollout").count();
    assert_eq!(decisions, history.len(), "one timeline row per rollout document");
    let run = &json["run"];
    assert!(run["measured"].as_u64().unwrap() > 300, "{run}");
    let versions = json["versions"].as_array().unwrap();
    let figures = versions
        .iter()
        .find(|v| v["version"] == format!("ctr/{production}"))
        .unwrap_or_else(|| panic!("production v{production} served nothing: {versions:#?}"));
    let figure = |key: &str| figures[key].as_f64().unwrap_or_else(|| panic!("no {key}: {figures}"));
    assert!(figure("oracle_rpm") >= figure("expected_rpm") * 0.99, "{figures}");
    assert!(figure("expected_rpm") > figure("bid_only_rpm"), "the trained model beats bid alone: {figures}");
    let hours = json["hours"].as_array().unwrap();
    assert!(hours.iter().any(|h| h["version"] == format!("ctr/{production}")), "{hours:#?}");
    assert!(json["clicks"]["accepted"].as_u64().unwrap() > 0);
    let page = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(page.contains("The loop: versions, gates, rollout steps and decisions"));
    assert!(page.contains("Expected RPM by simulated hour") && page.matches("<svg").count() >= 4);
}
