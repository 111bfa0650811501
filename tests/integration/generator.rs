//! The open-loop generator against a tiny local HTTP server: the schedule is honoured, and a
//! server that stalls for a second shows in the percentiles as every scheduled request's wait
//! (wrk2's demonstration of coordinated omission, corrected).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use adrank_loadtest::generator::{Arrivals, RunConfig, run};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A keep-alive HTTP/1.1 server answering every POST with 200 and a small body. With `stall`,
/// every request that arrives between 1.5 s and 2.5 s after the first one is answered at 2.5 s.
async fn server(stall: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let first = Arc::clone(&first);
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
                    if stall {
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
        path: "/".into(),
        rate,
        duration: Duration::from_secs(seconds),
        warmup: Duration::from_millis(500),
        connections: 16,
        arrivals: Arrivals::Constant,
        timeout: Duration::from_secs(5),
        seed: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_is_honoured() {
    let addr = server(false).await;
    let report = run(&config(addr, 1_000.0, 3), Arc::new(vec![b"{}".to_vec()])).await.unwrap();
    let ok = report.statuses.get(&200).copied().unwrap_or(0);
    assert_eq!(ok, report.scheduled, "{report:?}");
    assert!((report.achieved_rate / 1_000.0 - 1.0).abs() < 0.01, "achieved {} req/s", report.achieved_rate);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_stall_shows_in_the_percentiles() {
    let addr = server(true).await;
    let report = run(&config(addr, 200.0, 4), Arc::new(vec![b"{}".to_vec()])).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loadtest_command_reports_what_it_measured() {
    let addr = server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let target = addr.to_string();
    let output = adrank(&["loadtest", "--target", &target, "--rate", "200", "--duration", "2", "--warmup", "0.5"])
        .args(["--connections", "4", "--bodies", "20", "--json"])
        .arg(&json)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("latency p99"), "{text}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(summary["statuses"]["200"], summary["scheduled"], "{summary}");
    assert!((summary["achieved_rate"].as_f64().unwrap() / 200.0 - 1.0).abs() < 0.02, "{summary}");
    for q in ["p50", "p99", "p99.9", "max"] {
        assert!(summary["latency_ms"][q].as_f64().unwrap() > 0.0, "{summary}");
    }
    // Only loopback targets.
    let refused =
        adrank(&["loadtest", "--target", "10.1.2.3:80", "--duration", "1", "--warmup", "0"]).output().await.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("loopback"), "{refused:?}");
}
