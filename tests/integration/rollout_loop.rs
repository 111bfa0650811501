//! Rollouts decided on live traffic, end to end: the world's history through a real broker into
//! Redis and the training log, two models trained from it (one on shuffled labels), `adrank
//! serve` following the rollout, `adrank ingest` counting each arm's outcomes, `adrank rollout
//! control` deciding, and the world clicking on what it is shown. The better candidate is
//! promoted (through a controller killed mid-rollout), the worse one rolled back, the world's
//! truth agrees, and no client sees an error.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use adrank_contracts::training_log::{TrainingLog, utc_hour};
use adrank_featurestore::kafka::admin;
use adrank_loadtest::{
    generator::{Api, Arrivals, Progress, RunConfig, run},
    ranking::Ranking,
    world::{World, WorldConfig},
};
use adrank_registry::{Registry, RegistryConfig, Rollout, rollout::Status};
use adrank_testkit::{broker::TestBroker, redis::TestRedis, workspace_root};
use tokio::process::{Child, Command};

use crate::serving_api::try_http;

const DAYS: f64 = 0.3;

fn world_config() -> WorldConfig {
    // A high click rate, so that minutes of traffic tell the arms apart.
    WorldConfig { users: 3_000, advertisers: 100, ads: 800, mean_ctr: 0.1, ..WorldConfig::default() }
}

struct Stack {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    registry: Registry,
}

impl Stack {
    fn command(&self, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_adrank"));
        command.current_dir(workspace_root()).kill_on_drop(true);
        for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("ADRANK_")) {
            command.env_remove(var);
        }
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command.envs(extra.iter().copied());
        command.args(args);
        command
    }

    /// Runs `adrank <args>` to its end; panics with its output when it fails.
    async fn run(&self, args: &[&str]) -> String {
        let output = self.command(args, &[]).output().await.unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "adrank {} failed:\n{text}", args.join(" "));
        text
    }

    /// Starts `adrank <args>` with its output in a file named `log`.
    fn spawn(&self, args: &[&str], log: &str) -> Child {
        self.spawn_with(args, log, &[])
    }

    /// [`Stack::spawn`] with `extra` variables in its environment.
    fn spawn_with(&self, args: &[&str], log: &str, extra: &[(&str, &str)]) -> Child {
        let file = std::fs::File::create(self.dir.path().join(log)).unwrap();
        self.command(args, extra).stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap()
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default()
    }

    /// The warnings and errors in a process's log.
    fn problems(&self, log: &str) -> String {
        let text = self.log(log);
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        lines.join("\n")
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    async fn rollout(&self) -> Rollout {
        self.registry.rollout("ctr").await.unwrap().expect("a rollout")
    }

    /// Waits until the rollout reaches a document satisfying `done`, at most `limit`, while the
    /// load keeps running without errors.
    async fn wait_for(
        &self,
        what: &str,
        (progress, addr): (&Progress, SocketAddr),
        limit: Duration,
        done: impl Fn(&Rollout) -> bool,
    ) -> Rollout {
        let started = Instant::now();
        loop {
            let rollout = self.rollout().await;
            if done(&rollout) {
                return rollout;
            }
            if progress.read().errors > 0 {
                panic!(
                    "a client saw an error while waiting for {what}; the server counted\n{}\nand said:\n{}",
                    request_counts(addr).await,
                    self.problems("serve.log")
                );
            }
            assert!(
                started.elapsed() < limit,
                "no {what} within {limit:?}: {rollout:?}\ncontroller:\n{}\ningest:\n{}",
                self.log("control.log"),
                self.log("ingest.log")
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `adrank status` on the running stack, rollout 1 at 100%: every part read, with the figures
/// the processes and the registry hold.
async fn status_shows_the_loop(stack: &Stack, addr: SocketAddr) {
    let output = stack.command(&["status", "--model", "ctr", "--json"], &[]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "status failed:\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}:\n{stdout}"));
    for dependency in status["dependencies"].as_array().unwrap() {
        assert_eq!(dependency["ok"], true, "{dependency}");
    }
    let models = &status["models"]["read"];
    assert_eq!(models[0]["name"], "ctr", "{models}");
    assert_eq!((models[0]["versions"].as_u64(), models[0]["aliases"]["production"].as_u64()), (Some(2), Some(1)));
    let rollout = &status["rollout"]["read"];
    assert_eq!((rollout["status"].as_str(), rollout["step"].as_u64()), (Some("running"), Some(1)), "{rollout}");
    let arms = rollout["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2, "{rollout}");
    for arm in arms {
        // Both arms served at 50%: their outcomes over the rollout are in the log.
        assert!(arm["impressions"].as_u64().unwrap() >= 2000, "{arm}");
        assert!(arm["ctr"].as_f64().unwrap() > 0.0, "{arm}");
    }
    let replica = &status["replicas"][0];
    assert_eq!(replica["metrics"], format!("http://{addr}/metrics"));
    assert_eq!(replica["ready"]["read"]["model"]["name"], "ctr", "{replica}");
    assert!(replica["rank_requests"].as_f64().unwrap() >= 600.0, "{replica}");
    let topics = status["ingest"]["read"].as_array().unwrap_or_else(|| panic!("{}", status["ingest"]));
    assert_eq!(topics.len(), 4, "{topics:?}");
    assert!(topics.iter().all(|t| t["end"].as_i64().unwrap() > 0), "{topics:?}");
    assert_eq!(status["retraining"]["read"], serde_json::json!([]));
    // The screen a person reads says the same.
    let text = stack.run(&["status", "--model", "ctr"]).await;
    eprintln!("adrank status:\n{text}");
    for expected in ["DEPENDENCIES", "rollout 1 running: v1 (production) against v2 (candidate)", "ARM", "READY"] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }
}

/// One ranking request sent with a W3C trace context: serving's spans (the request, its
/// stages, the impression log) continue the caller's trace; the ingester's span of each of its
/// impressions, in another process, is a child of the impression log's, ended once applied;
/// and each impression's training example, written to the log, is a child of that.
async fn a_trace_crosses_processes(stack: &Stack, addr: SocketAddr, received: &crate::observability::Received) {
    let requests = stack.run(&["sim", "requests", "-n", "1"]).await;
    let body = requests.lines().find(|l| l.starts_with('{')).expect("a request");
    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let header = format!("traceparent: 00-{trace}-{caller}-01\r\n");
    let (status, _, reply) = try_http(addr, "POST", "/v1/rank", &header, body.as_bytes()).await.unwrap();
    assert_eq!(status, 200, "{reply}");
    let shown = serde_json::from_str::<serde_json::Value>(&reply).unwrap()["ranked"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["impression_id"].is_null())
        .count();
    assert!(shown > 0, "{reply}");
    let started = Instant::now();
    loop {
        let spans: Vec<_> = received.lock().unwrap().iter().filter(|s| s.trace_id == trace).cloned().collect();
        let named = |name: &str| spans.iter().filter(|s| s.name == name).cloned().collect::<Vec<_>>();
        let (rank, logged, events) = (named("rank"), named("impression_log"), named("ingest.event"));
        let examples = named("training_example");
        if let ([rank], [logged]) = (&rank[..], &logged[..])
            && events.len() >= shown
            && examples.len() >= shown
        {
            assert_eq!((rank.service.as_str(), rank.parent_span_id.as_str()), ("adrank-serve", caller), "{rank:?}");
            assert_eq!(rank.attributes.get("http.response.status_code").map(String::as_str), Some("200"));
            for stage in ["parse", "features", "score", "impression_log"] {
                let stage = named(stage);
                assert!(stage.iter().any(|s| s.parent_span_id == rank.span_id), "{stage:?} under {rank:?}");
            }
            assert_eq!(logged.service, "adrank-serve");
            for event in &events {
                assert_eq!(event.service, "adrank-ingest", "{event:?}");
                assert_eq!(event.parent_span_id, logged.span_id, "{event:?} under {logged:?}");
                assert_eq!(event.attributes.get("outcome").map(String::as_str), Some("applied"), "{event:?}");
            }
            // The request's time is the world's first, long past the history's clicks: each
            // impression's window closes at once, and its example is in the next log commit.
            for example in &examples {
                assert!(events.iter().any(|e| e.span_id == example.parent_span_id), "{example:?} under {events:?}");
                assert_eq!(example.attributes.get("outcome").map(String::as_str), Some("written"), "{example:?}");
            }
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the trace is incomplete after 60 s ({shown} impressions shown): {spans:#?}\nserve:\n{}\ningest:\n{}",
            stack.problems("serve.log"),
            stack.problems("ingest.log")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Writes the examples of the log at `from` to a new log at `to`, their labels shuffled among
/// them: a model trained on it learns nothing about who clicks.
async fn shuffled_copy(from: &str, to: &str) {
    let (source, target) = (TrainingLog::open(from).unwrap(), TrainingLog::open(to).unwrap());
    source.shuffled_copy(&target, None, 0x2545_f491_4f6c_dd1d).await.unwrap();
}

/// The server's request counters, by route and status.
async fn request_counts(addr: SocketAddr) -> String {
    let metrics = try_http(addr, "GET", "/metrics", "", b"").await.map(|(_, _, body)| body).unwrap_or_default();
    let lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with("adrank_serving_requests_total")).collect();
    lines.join("\n")
}

async fn ready(addr: SocketAddr, server: &mut Child, stack: &Stack) {
    let started = Instant::now();
    while try_http(addr, "GET", "/readyz", "", b"").await.map(|(status, ..)| status) != Some(200) {
        assert!(server.try_wait().unwrap().is_none(), "the server exited:\n{}", stack.log("serve.log"));
        assert!(started.elapsed() < Duration::from_secs(120), "the server was not ready:\n{}", stack.log("serve.log"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_promotes_a_better_candidate_and_rolls_back_a_worse_one_on_live_traffic() {
    let _heavy = adrank_testkit::heavy().await;
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1} s  {what}", t0.elapsed().as_secs_f64());
    let broker = TestBroker::start_persistent().await;
    admin::ensure_topics(&broker.config).await.unwrap();
    let redis = TestRedis::new().await;
    let dir = tempfile::tempdir().unwrap();
    let registry_location = dir.path().join("registry").display().to_string();
    let world = world_config();
    let addr: SocketAddr = format!("127.0.0.1:{}", adrank_testkit::free_port()).parse().unwrap();
    let env: Vec<(String, String)> = [
        ("ADRANK_LOG", "info".to_string()),
        ("ADRANK_KAFKA__BROKERS", broker.config.brokers.clone()),
        ("ADRANK_KAFKA__CONSUMER_GROUP", "rollout-test".into()),
        ("ADRANK_REDIS__URL", redis.config.url.clone()),
        ("ADRANK_REDIS__KEY_PREFIX", redis.config.key_prefix.clone()),
        ("ADRANK_INGEST__TRAINING_LOG", dir.path().join("log").display().to_string()),
        ("ADRANK_INGEST__LOG_COMMIT_INTERVAL_MS", "500".into()),
        ("ADRANK_REGISTRY__LOCATION", registry_location.clone()),
        ("ADRANK_SERVING__REGISTRY_POLL_MS", "500".into()),
        // Unoptimised binaries, six processes on two cores: the test is about transitions, not
        // latency, so a slow reply must not count as a failed one.
        ("ADRANK_SERVING__DEFAULT_DEADLINE_MS", "2000".into()),
        ("ADRANK_WORLD__USERS", world.users.to_string()),
        ("ADRANK_WORLD__ADS", world.ads.to_string()),
        ("ADRANK_WORLD__ADVERTISERS", world.advertisers.to_string()),
        ("ADRANK_WORLD__MEAN_CTR", world.mean_ctr.to_string()),
        // Looks every second; each arm needs 2,000 closed impressions and 100 clicks, and a
        // step lasts at least 5 s.
        ("ADRANK_ROLLOUT__ANALYSIS_INTERVAL_SECS", "1".into()),
        ("ADRANK_ROLLOUT__MIN_IMPRESSIONS", "2000".into()),
        ("ADRANK_ROLLOUT__MIN_CLICKS", "100".into()),
        ("ADRANK_ROLLOUT__MIN_STEP_SECS", "5".into()),
        // A model trained briefly over-predicts the slots it wins (won for their high scores;
        // docs/rollouts.md): the test is about CTR, so the band is wide.
        ("ADRANK_ROLLOUT__CALIBRATION_MIN", "0.3".into()),
        ("ADRANK_ROLLOUT__CALIBRATION_MAX", "3".into()),
        // Errors and latency from the server's own /metrics, 300 requests per arm.
        ("ADRANK_ROLLOUT__SERVING_METRICS", format!("[\"http://{addr}/metrics\"]")),
        ("ADRANK_ROLLOUT__MIN_REQUESTS", "300".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let registry = Registry::open(&RegistryConfig { location: registry_location }).unwrap();
    let stack = Stack { dir, env, registry };

    // History into Redis and the training log, then two models of it: version 1 (production)
    // learnt from shuffled labels, version 2 from the real ones.
    let days = DAYS.to_string();
    stack.run(&["sim", "bootstrap", "--days", &days]).await;
    stack.run(&["ingest", "--exit-when-idle", "3"]).await;
    phase("history ingested");
    shuffled_copy(&stack.path("log"), &stack.path("shuffled")).await;
    let start = world.start_time_ms;
    let (since, until) = (utc_hour(start), utc_hour(start + (DAYS * 86_400_000.0) as i64 - 1_800_000));
    for (log, alias) in [(stack.path("shuffled"), Some("production")), (stack.path("log"), None)] {
        // Logistic regression: it trains in seconds, and the truth's model still beats the
        // shuffled one.
        let mut args = vec![
            "train",
            "--since",
            &since,
            "--until",
            &until,
            "--epochs",
            "1",
            "--model",
            "logistic",
            "--training-log",
            &log,
        ];
        args.extend(alias.iter().flat_map(|alias| ["--alias", *alias]));
        stack.run(&args).await;
    }

    phase("two models trained");
    // Serving, the live ingester and the controller; the world's traffic continues its history.
    // Serving and the ingester export spans to a receiver here: the load's requests 1 in 100,
    // every request that comes with a sampled trace context.
    let (otlp, spans) = crate::observability::otlp_receiver().await;
    let otlp = format!("http://{otlp}");
    let tracing = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
    ];
    let listen = addr.to_string();
    let mut server = stack.spawn_with(&["serve", "--follow", "production", "--listen", &listen], "serve.log", &tracing);
    ready(addr, &mut server, &stack).await;
    let metrics_port = || format!("127.0.0.1:{}", adrank_testkit::free_port());
    let ingest_metrics = metrics_port();
    let mut ingest = stack.spawn_with(&["ingest", "--metrics-listen", &ingest_metrics], "ingest.log", &tracing);
    a_trace_crosses_processes(&stack, addr, &spans).await;
    phase("a request traced into the ingester");
    stack.run(&["rollout", "start", "ctr", "2", "--plan", "50,100", "--reason", "better"]).await;
    let control_metrics = metrics_port();
    let mut controller =
        stack.spawn(&["rollout", "control", "ctr", "--metrics-listen", &control_metrics], "control.log");
    // The dashboard samples the loop from here to the end.
    let xray_listen = metrics_port();
    let mut xray = stack.spawn(&["xray", "--model", "ctr", "--listen", &xray_listen, "--every", "2"], "xray.log");
    // No traffic yet: the controller waits, and says why.
    let waiting = Instant::now();
    while !stack.log("control.log").contains("waiting: production arm has 0 impressions") {
        assert!(waiting.elapsed() < Duration::from_secs(30), "the controller said:\n{}", stack.log("control.log"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stack.rollout().await.seq, 1, "nothing decided on no data");

    let mut traffic = World::new(world.clone());
    traffic.replay_baseline_days(DAYS);
    let ranking = Arc::new(Ranking::closed_loop(traffic, 400, addr, &Api::rank()));
    let progress = Arc::new(Progress::default());
    let run_config = RunConfig {
        target: addr,
        api: Api::rank(),
        rate: 60.0,
        duration: Duration::from_secs(900),
        warmup: Duration::ZERO,
        connections: 8,
        arrivals: Arrivals::Poisson,
        timeout: Duration::from_secs(5),
        seed: 11,
    };
    let load = tokio::spawn({
        let (ranking, progress) = (Arc::clone(&ranking), Arc::clone(&progress));
        async move { run(&run_config, ranking, progress).await }
    });

    // The better candidate passes at 50%; the controller is killed there, and a new one
    // promotes it.
    let limit = Duration::from_secs(240);
    let advanced =
        stack.wait_for("a step to 100%", (&progress, addr), limit, |r| r.weight() == 100 || !r.is_active()).await;
    assert_eq!((advanced.status, advanced.weight()), (Status::Running, 100), "{advanced:?}");
    assert!(advanced.reason.starts_with("analysis passed"), "{}", advanced.reason);
    // Errors and latency were judged on what the server counted for the candidate at 50%.
    assert!(advanced.reason.contains("errors and latency: the candidate fails 0.00%"), "{}", advanced.reason);
    assert!(advanced.figures["candidate_requests"] >= 300.0, "{:?}", advanced.figures);
    assert!(advanced.figures["candidate_p99_ms"] > 0.0, "{:?}", advanced.figures);
    phase("advanced to 100%");
    controller.kill().await.unwrap();
    status_shows_the_loop(&stack, addr).await;
    let control_metrics = metrics_port();
    let mut controller =
        stack.spawn(&["rollout", "control", "ctr", "--metrics-listen", &control_metrics], "control.log");
    let promoted = stack.wait_for("a promotion", (&progress, addr), limit, |r| !r.is_active()).await;
    assert_eq!(promoted.status, Status::Promoted, "{promoted:?}");
    assert!(promoted.changed_by.starts_with("controller"), "{}", promoted.changed_by);

    phase("promoted");
    // Version 1 again, now against version 2: rolled back by the analysis.
    stack.run(&["rollout", "start", "ctr", "1", "--plan", "50,100", "--reason", "worse"]).await;
    let ended = stack.wait_for("a rollback", (&progress, addr), limit, |r| r.id == 2 && !r.is_active()).await;
    assert_eq!(ended.status, Status::RolledBack, "{ended:?}");
    assert!(ended.reason.starts_with("analysis failed"), "{}", ended.reason);
    assert!(ended.figures["candidate_ctr"] < ended.figures["production_ctr"], "{:?}", ended.figures);

    phase("rolled back");
    // The dashboard drew both rollouts, both versions' outcomes, and the serving figures.
    let charts = ["latency", "throughput", "errors", "lag", "freshness", "arm-p99", "ctr", "calibration", "timeline"];
    let expected = ["rollout 1: v2 against v1", "rollout 2: v1 against v2", ">v1: ", ">v2: ", "ready"];
    let screenshot = crate::observability::check_dashboard(&format!("http://{xray_listen}/"), &charts, &expected).await;
    eprintln!("the dashboard: {}", screenshot.display());
    phase("dashboard drawn");
    load.abort();
    let _ = load.await;
    assert_eq!(progress.read().errors, 0, "no client saw an error");
    // The world's truth: version 2 showed users ads they were likelier to click.
    let business = ranking.business();
    let true_ctr = |version: &str| {
        let b = &business[&format!("ctr/{version}")];
        b.true_ctr_sum / b.impressions as f64
    };
    assert!(true_ctr("2") > true_ctr("1") * 1.05, "true CTR: v1 {:.4}, v2 {:.4}", true_ctr("1"), true_ctr("2"));

    // Every process's metrics pass promtool, with the figures the dashboard and alerts read.
    let page = |addr: SocketAddr| async move {
        try_http(addr, "GET", "/metrics", "", b"").await.map(|(_, _, body)| body).unwrap_or_default()
    };
    let listen = addr.to_string();
    for (what, addr, expected) in [
        (
            "adrank serve",
            listen.as_str(),
            &["adrank_serving_rollout_request_seconds_bucket", "adrank_serving_requests_total"][..],
        ),
        (
            "adrank ingest",
            ingest_metrics.as_str(),
            &["adrank_ingest_events_total", "adrank_training_log_examples_total"][..],
        ),
        (
            "adrank rollout control",
            control_metrics.as_str(),
            &[
                "adrank_rollout_looks_total",
                "adrank_rollout_arm_ctr_ratio",
                "adrank_rollout_arm_p99_seconds",
                "adrank_rollout_decisions_total",
            ][..],
        ),
    ] {
        let text = page(addr.parse().unwrap()).await;
        crate::observability::check_metrics(what, &text);
        for name in expected {
            assert!(text.contains(name), "{what} exports no {name}:\n{text}");
        }
    }
    for child in [&mut xray, &mut controller, &mut ingest, &mut server] {
        child.kill().await.unwrap();
    }
}
