//! Observability that an operator can trust: every process's `/metrics` passes `promtool check
//! metrics` (the checks run where the processes run: serving, the ingester and the rollout
//! controller in rollout_loop.rs); the alert and recording rules under deploy/prometheus pass
//! `promtool check rules` and their unit tests; and every metric the rules and the Grafana
//! dashboard name is one adrank emits.

use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Command, Stdio},
};

/// `promtool`, from Debian's `prometheus` package (./dev.sh setup installs it).
fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "promtool is missing: run ./dev.sh setup (it installs Debian's prometheus package)"
    );
    Command::new("promtool")
}

/// Panics unless `promtool check metrics` accepts `text`, the `/metrics` page of `what`.
pub(crate) fn check_metrics(what: &str, text: &str) {
    assert!(text.contains("# TYPE"), "{what} exported no metrics:\n{text}");
    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics on {what}:\n{said}\n---\n{text}"
    );
}

fn deploy(path: &str) -> std::path::PathBuf {
    adrank_testkit::workspace_root().join("deploy").join(path)
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = deploy("prometheus");
    for args in [&["check", "rules", "adrank-rules.yml"][..], &["test", "rules", "adrank-rules-test.yml"][..]] {
        let output = promtool().args(args).current_dir(&rules).output().unwrap();
        let said = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "promtool {}:\n{said}", args.join(" "));
        assert!(said.contains("SUCCESS"), "{said}");
    }
}

/// Every metric name the code defines (the `adrank_…` string constants of the metrics modules).
fn defined_metrics() -> BTreeSet<String> {
    let root = adrank_testkit::workspace_root();
    let files = [
        "serving/src/metrics.rs",
        "featurestore/src/metrics.rs",
        "trainer/src/metrics.rs",
        "trainer/src/rollout/metrics.rs",
        "contracts/src/arm_requests.rs",
    ];
    files.iter().flat_map(|file| names(&std::fs::read_to_string(root.join(file)).unwrap(), true)).collect()
}

/// The `adrank_…` names in `text`; with `quoted`, only those that open a string literal.
fn names(text: &str, quoted: bool) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices("adrank_") {
        let preceded = text[..i].chars().next_back();
        let inside_another = preceded.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if inside_another || (quoted && preceded != Some('"')) {
            continue;
        }
        found.push(text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect());
    }
    found
}

/// A histogram's or summary's series name, as its base metric.
fn base(name: &str) -> &str {
    ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_one_adrank_emits() {
    let defined = defined_metrics();
    assert!(defined.len() > 40, "{defined:?}");
    let dashboard = std::fs::read_to_string(deploy("grafana/adrank.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = parsed["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for (file, text) in [
        ("adrank-rules.yml", std::fs::read_to_string(deploy("prometheus/adrank-rules.yml")).unwrap()),
        ("adrank.json", dashboard),
    ] {
        let used: BTreeSet<String> = names(&text, false).into_iter().collect();
        assert!(!used.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = used.iter().filter(|n| !defined.contains(base(n))).collect();
        assert!(unknown.is_empty(), "{file} names metrics adrank does not emit: {unknown:?}");
    }
    // Each panel queries something.
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {:?} has no query", panel["title"]);
    }
}

/// Debian's `chromium`, headless, as root may run it (./dev.sh setup installs it).
fn chromium(profile: &std::path::Path) -> tokio::process::Command {
    let found = Command::new("chromium").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "chromium is missing: run ./dev.sh setup (it installs Debian's chromium)"
    );
    let mut command = tokio::process::Command::new("chromium");
    command
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .args(["--hide-scrollbars", "--window-size=1400,1250", "--virtual-time-budget=6000"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .kill_on_drop(true);
    command
}

/// The `data-NAME` attribute of the element whose id is `id` in a serialized DOM.
fn attribute(dom: &str, id: &str, name: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let tag = &dom[dom[..start].rfind('<')?..];
    let tag = &tag[..tag.find('>')?];
    let at = tag.find(&format!(" data-{name}=\""))? + name.len() + 8;
    Some(tag[at..at + tag[at..].find('"')?].to_string())
}

/// Loads the X-Ray page at `url` in headless Chromium: it draws without an error, every chart
/// has data, and `expected` appears on it; keeps a screenshot and returns its path.
pub(crate) async fn check_dashboard(url: &str, charts: &[&str], expected: &[&str]) -> std::path::PathBuf {
    let profile = tempfile::tempdir().unwrap();
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        chromium(profile.path()).args(["--dump-dom", url]).output(),
    )
    .await
    .expect("chromium printed the page within 2 minutes")
    .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chromium failed:\n{said}");
    let root = dom.find("<html").map_or("", |at| &dom[at..at + dom[at..].find('>').unwrap_or(0)]);
    assert!(!root.contains("data-errors"), "the page failed: {root}\n{dom}");
    assert!(root.contains("data-drawn"), "the page never drew: {root}\nchromium said:\n{said}\n{dom}");
    for chart in charts {
        let points: usize = attribute(&dom, chart, "points").and_then(|p| p.parse().ok()).unwrap_or(0);
        assert!(points > 1, "chart {chart} drew {points} points:\n{dom}");
    }
    for text in expected {
        assert!(dom.contains(text), "no `{text}` on the page:\n{dom}");
    }
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("xray-dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        chromium(profile.path()).arg(format!("--screenshot={}", screenshot.display())).arg(url).output(),
    )
    .await
    .expect("chromium took the screenshot within 2 minutes")
    .unwrap();
    let size = std::fs::metadata(&screenshot).map_or(0, |m| m.len());
    assert!(size > 20_000, "a {size}-byte screenshot:\n{}", String::from_utf8_lossy(&output.stderr));
    screenshot
}

#[test]
fn attributes_are_read_from_the_dom() {
    let dom = r#"<html data-drawn="3"><body><figure id="ctr" class="x" data-points="12"><svg></svg></figure>"#;
    assert_eq!(attribute(dom, "ctr", "points").as_deref(), Some("12"));
    assert_eq!(attribute(dom, "ctr", "rows"), None);
    assert_eq!(attribute(dom, "lag", "points"), None);
}

/// A span as an OTLP receiver got it; ids in lowercase hex (an empty parent: a root).
#[derive(Debug, Clone)]
pub(crate) struct ReceivedSpan {
    pub(crate) service: String,
    pub(crate) name: String,
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
    pub(crate) parent_span_id: String,
    pub(crate) attributes: std::collections::BTreeMap<String, String>,
}

pub(crate) type Received = std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>;

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf, decoded with the protocol's own
/// messages) on a free loopback port: its address and what it has received so far.
pub(crate) async fn otlp_receiver() -> (std::net::SocketAddr, Received) {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, any_value::Value},
    };
    use prost::Message as _;
    fn text(value: Option<&AnyValue>) -> String {
        match value.and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::DoubleValue(d)) => d.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            other => format!("{other:?}"),
        }
    }
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let received: Received = Default::default();
    let store = received.clone();
    let receive = move |body: axum::body::Bytes| {
        let store = store.clone();
        async move {
            let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                return axum::http::StatusCode::BAD_REQUEST;
            };
            let mut spans = store.lock().unwrap();
            for resource in &request.resource_spans {
                let service = resource
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                    .map(|a| text(a.value.as_ref()))
                    .unwrap_or_default();
                for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span.attributes.iter().map(|a| (a.key.clone(), text(a.value.as_ref()))).collect(),
                    });
                }
            }
            axum::http::StatusCode::OK
        }
    };
    let app = axum::Router::new().route("/v1/traces", axum::routing::post(receive));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}
