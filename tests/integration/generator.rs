//! The open-loop generator against a tiny local HTTP server: the schedule is honoured, and a
//! server that stalls for a second shows in the percentiles as every scheduled request's wait
//! (wrk2's demonstration of coordinated omission, corrected).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use adrank_loadtest::generator::{Api, Arrivals, Cycle, RunConfig, run};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How the test server answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    /// Every request that arrives between 1.5 s and 2.5 s after the first one is answered at
    /// 2.5 s.
    Stall,
    /// One request at a time, each taking this long: a server with a known capacity.
    Serial(Duration),
}

/// A keep-alive HTTP/1.1 server answering every POST with 200 and a small body.
async fn server(mode: Mode) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let busy: Arc<tokio::sync::Mutex<()>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let (first, busy) = (Arc::clone(&first), Arc::clone(&busy));
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: a head, then content-length bytes.
                    let (head_end, length) = loop {
                        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (end + 4, length);
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buffer.len() < head_end + length {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buffer.drain(..head_end + length);
                    if let Mode::Serial(service) = mode {
                        let _one_at_a_time = busy.lock().await;
                        tokio::time::sleep(service).await;
                    }
                    if mode == Mode::Stall {
                        let now = Instant::now();
                        let first = *first.lock().unwrap().get_or_insert(now);
                        let (from, to) = (first + Duration::from_millis(1500), first + Duration::from_millis(2500));
                        if now >= from && now < to {
                            tokio::time::sleep_until(to.into()).await;
                        }
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
                    if socket.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn config(target: SocketAddr, rate: f64, seconds: u64) -> RunConfig {
    RunConfig {
        target,
        api: Api::Http("/".into()),
        rate,
        duration: Duration::from_secs(seconds),
        warmup: Duration::from_millis(500),
        connections: 16,
        arrivals: Arrivals::Constant,
        timeout: Duration::from_secs(5),
        seed: 1,
    }
}

fn body() -> Arc<Cycle> {
    Arc::new(Cycle::new([b"{}".to_vec()]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_is_honoured() {
    let addr = server(Mode::Plain).await;
    let report = run(&config(addr, 1_000.0, 3), body(), Arc::default()).await.unwrap();
    let ok = report.statuses.get(&200).copied().unwrap_or(0);
    assert_eq!(ok, report.scheduled, "{report:?}");
    assert!((report.achieved_rate / 1_000.0 - 1.0).abs() < 0.01, "achieved {} req/s", report.achieved_rate);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_stall_shows_in_the_percentiles() {
    let addr = server(Mode::Stall).await;
    let report = run(&config(addr, 200.0, 4), body(), Arc::default()).await.unwrap();
    let h = &report.latency_us;
    let (p50, p90, p99, max) = (h.value_at_quantile(0.5), h.value_at_quantile(0.9), h.value_at_quantile(0.99), h.max());
    // About a third of the measured 3.5 s falls in the stall: those requests waited up to 1 s.
    assert!(p50 < 50_000, "p50 {p50} us");
    assert!(p90 > 400_000, "p90 {p90} us: the stall must show beyond one slow reply");
    assert!(p99 > 850_000 && max > 900_000, "p99 {p99} us, max {max} us");
    assert!(report.late > 100, "requests held behind the stall are counted late: {}", report.late);
}

/// The `adrank` binary with a small world (fast to build), in the repository root.
fn adrank(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_adrank"));
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ADRANK_WORLD__USERS", "500")
        .env("ADRANK_WORLD__ADS", "300")
        .env("ADRANK_WORLD__ADVERTISERS", "30");
    command
}

/// Runs `adrank loadtest` against `addr` with `args`; returns its output, report.json and
/// report.html.
async fn loadtest(addr: SocketAddr, args: &[&str]) -> (String, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let target = addr.to_string();
    let output =
        adrank(&["loadtest", "--target", &target, "--report"]).arg(dir.path()).args(args).output().await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    let report = serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    (text, report, std::fs::read_to_string(dir.path().join("report.html")).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loadtest_command_reports_what_it_measured() {
    let addr = server(Mode::Plain).await;
    let (text, report, page) = loadtest(
        addr,
        &["--rate", "200", "--requests", "300", "--warmup", "0.5", "--connections", "4", "--bodies", "20"],
    )
    .await;
    assert!(text.contains("latency p99"), "{text}");
    let run = &report["run"];
    assert_eq!(run["scheduled"], 300, "--requests 300 measures exactly 300: {run}");
    assert_eq!(run["statuses"]["200"], run["scheduled"], "{run}");
    assert!((run["achieved_rate"].as_f64().unwrap() / 200.0 - 1.0).abs() < 0.02, "{run}");
    for q in ["p50", "p99", "p99.9", "max"] {
        assert!(run["latency_ms"][q].as_f64().unwrap() > 0.0, "{run}");
    }
    // One point per second of the measured 1.5 s, and a percentile curve.
    assert_eq!(report["series"].as_array().unwrap().len(), 2, "{report}");
    assert!(report["percentiles"].as_array().unwrap().len() >= 20, "{report}");
    assert!(page.starts_with("<!doctype html>") && page.ends_with("</html>\n"), "{page}");
    assert_eq!(page.matches("<svg").count(), 2, "latency over time and by percentile");
    // Only loopback targets.
    let refused =
        adrank(&["loadtest", "--target", "10.1.2.3:80", "--duration", "1", "--warmup", "0"]).output().await.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("loopback"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_finds_the_knee_of_a_server_with_known_capacity() {
    // One request at a time, 5 ms each (6 with the timer's rounding): 165 to 200 req/s.
    let addr = server(Mode::Serial(Duration::from_millis(5))).await;
    let (_, report, page) = loadtest(
        addr,
        &["--sweep", "--rate", "50", "--factor", "2", "--duration", "2", "--warmup", "0.5", "--slo-p99-ms", "100"]
            .into_iter()
            .chain(["--refine", "2", "--connections", "8", "--bodies", "10"])
            .collect::<Vec<_>>(),
    )
    .await;
    let sweep = &report["sweep"];
    let knee = sweep["knee"].as_f64().unwrap_or_else(|| panic!("no knee: {sweep}"));
    assert!((100.0..=260.0).contains(&knee), "knee {knee} req/s for a capacity of 165-200: {sweep}");
    let steps = sweep["steps"].as_array().unwrap();
    assert!(steps.iter().any(|s| s["held"] == false && s["rate"].as_f64().unwrap() > knee), "{sweep}");
    // The report's run is the knee's.
    assert_eq!(report["run"]["rate"].as_f64(), Some(knee));
    assert_eq!(page.matches("<svg").count(), 4, "with throughput and latency against offered rate");
    assert!(page.contains("Knee: <b>"), "{page}");
}
