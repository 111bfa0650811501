//! `adrank sim`: bootstrap history into a real broker, then read it back for oracle metrics.

use adrank_featurestore::kafka::admin;
use adrank_testkit::broker::TestBroker;

use crate::local_stack::adrank;

fn value<'a>(table: &'a str, row: &str) -> &'a str {
    table.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no row {row:?} in:\n{table}"))[row.len()..]
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_publishes_what_oracle_reads_back() {
    let broker = TestBroker::start().await;
    admin::ensure_topics(&broker.config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("adrank.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n\n[world]\nusers = 2000\nadvertisers = 50\nads = 500\nrequests_per_hour = 400\n",
            broker.config.brokers
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let bootstrap = adrank(&["--config", config, "sim", "bootstrap", "--days", "0.5"], dir.path(), &[]);
    let out = String::from_utf8_lossy(&bootstrap.stdout).into_owned();
    assert!(bootstrap.status.success(), "{out}{}", String::from_utf8_lossy(&bootstrap.stderr));
    assert_eq!(value(&out, "impressions"), (0.5 * 24.0 * 400.0 * 5.0).to_string(), "{out}");
    assert_eq!(value(&out, "user profiles"), "2000");
    let clicks = value(&out, "clicks").to_string();

    let oracle = adrank(&["--config", config, "sim", "oracle"], dir.path(), &[]);
    let text = String::from_utf8_lossy(&oracle.stdout).into_owned();
    assert!(oracle.status.success(), "{text}{}", String::from_utf8_lossy(&oracle.stderr));
    assert_eq!(value(&text, "impressions"), "24000", "{text}");
    let ctr: f64 = value(&text, "CTR").parse().unwrap();
    assert!((ctr * 24000.0 - clicks.parse::<f64>().unwrap()).abs() < 0.5, "every click read back: {text} vs {out}");
    let published: f64 =
        value(&out, "oracle").split(',').next().unwrap().trim_start_matches("log loss ").parse().unwrap();
    let read_back: f64 = value(&text, "log loss").parse().unwrap();
    assert!((published - read_back).abs() < 1e-5, "same events, same oracle: {text} vs {out}");
}

#[test]
fn requests_print_api_bodies_and_oracle_reads_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("adrank.toml");
    std::fs::write(&config, "[world]\nusers = 1000\nadvertisers = 20\nads = 300\n").unwrap();
    let config = config.to_str().unwrap();
    let output = adrank(&["--config", config, "sim", "requests", "-n", "3"], dir.path(), &[]);
    assert!(output.status.success());
    let lines: Vec<adrank_contracts::request::RankRequest> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a ranking request"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|r| r.candidates.len() == 200));

    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"not\": \"an event\"}\n").unwrap();
    let output = adrank(&["--config", config, "sim", "oracle", "--file", events.to_str().unwrap()], dir.path(), &[]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(error.contains("events.jsonl:1: neither an impression"), "{error}");
}
