//! The retraining loop against the real registry, Parquet training log and ONNX Runtime: a
//! cycle end to end, shuffled labels refused, a cycle killed inside each step resumed with one
//! candidate, a waiting loop taking over a killed holder's lease, and a retrained model beating
//! a stale production on a drifting world.

use std::{path::Path, process::Stdio, time::Duration};

use adrank_contracts::training_log::{CommitRequest, TrainingLog, utc_hour};
use adrank_loadtest::{
    history::{HistoryOptions, write_history},
    world::{World, WorldConfig},
};
use adrank_registry::{PRODUCTION, Registry, RegistryConfig};
use adrank_trainer::{
    TrainingConfig,
    model::Architecture,
    retrain::{
        CYCLE_TAG, Cycle, CycleOutcome, Decision, GatesConfig, Launch, Outcome, RetrainConfig, Retrainer, Step, cycles,
        windows::{final_hours, plan},
    },
};
use tokio::io::{AsyncBufReadExt as _, BufReader};

fn world() -> World {
    World::new(WorldConfig {
        users: 3_000,
        advertisers: 100,
        ads: 600,
        requests_per_hour: 500,
        ..WorldConfig::default()
    })
}

async fn history(world: &mut World, log: &TrainingLog, days: f64) {
    let options = HistoryOptions {
        days,
        attribution_window_ms: 15 * 60_000,
        allowed_lateness_ms: 10 * 60_000,
        commit_examples: 10_000,
    };
    write_history(world, log, options).await.unwrap();
}

fn training() -> TrainingConfig {
    TrainingConfig {
        model: Architecture::Logistic,
        epochs: 2,
        threads: 2,
        shuffle_buffer: 5_000,
        ..TrainingConfig::default()
    }
}

/// Windows of a small world: a day to train on (every hour of day seen), the newest 4 hours to
/// judge on; gates sized to it. The calibration band is wider than the default: the world's
/// click rate swings ±30% over the day and a day of data teaches a model only part of that, so
/// 4 hours of evaluation can sit 20-25% off (the truth's own mean is within 5%).
fn retrain_config() -> RetrainConfig {
    RetrainConfig {
        train_hours: 24,
        eval_hours: 4,
        gates: GatesConfig {
            min_examples: 2_000,
            min_clicks: 40,
            min_slice_examples: 2_000,
            calibration_min: 0.7,
            calibration_max: 1.4,
            ..GatesConfig::default()
        },
        ..RetrainConfig::default()
    }
}

fn retrainer(registry: &Registry, log: &str, promote: bool) -> Retrainer {
    Retrainer {
        registry: registry.clone(),
        log: log.into(),
        spec: adrank_testkit::spec(),
        training: training(),
        ort: adrank_testkit::onnxruntime(),
        retrain: retrain_config(),
        promote,
        holder: "test".into(),
        launch: Launch {
            exe: env!("CARGO_BIN_EXE_adrank").into(),
            config: None,
            spec: adrank_testkit::workspace_root().join("config/features.toml"),
        },
    }
}

fn open_registry(dir: &Path, name: &str) -> Registry {
    Registry::open(&RegistryConfig { location: dir.join(name).display().to_string() }).unwrap()
}

/// A training log fed by a small world, a registry and a retrainer promoting what it blesses.
struct Fixture {
    dir: tempfile::TempDir,
    location: String,
    log: TrainingLog,
    world: World,
    registry: Registry,
    retrainer: Retrainer,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("log").display().to_string();
        let log = TrainingLog::open(&location).unwrap();
        let registry = open_registry(dir.path(), "registry");
        let retrainer = retrainer(&registry, &location, true);
        Self { dir, location, log, world: world(), registry, retrainer }
    }
}

async fn finished(retrainer: &Retrainer) -> Cycle {
    match retrainer.once().await.unwrap() {
        CycleOutcome::Finished(cycle) => cycle,
        CycleOutcome::NotEnoughData(reason) => panic!("not enough data: {reason}"),
    }
}

fn train_record(cycle: &Cycle) -> (u64, Option<u64>, Option<String>) {
    match &cycle.steps[&Step::Train].outcome {
        Outcome::Train { version, parent, cold_start, .. } => (*version, *parent, cold_start.clone()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_records_every_step_and_the_next_warm_starts_from_production_and_is_judged_against_it() {
    let Fixture { dir, location, log, mut world, registry, retrainer } = Fixture::new();

    // Too little final data: nothing is recorded.
    history(&mut world, &log, 0.2).await;
    match retrainer.once().await.unwrap() {
        CycleOutcome::NotEnoughData(reason) => assert!(reason.contains("final hours"), "{reason}"),
        CycleOutcome::Finished(cycle) => panic!("a cycle on {cycle:?}"),
    }
    assert!(cycles(&registry, "ctr").await.unwrap().is_empty());

    history(&mut world, &log, 1.3).await;
    let first = finished(&retrainer).await;
    assert_eq!(first.steps.keys().copied().collect::<Vec<_>>(), Step::ALL, "every step is recorded");
    let hours = final_hours(&location).await.unwrap().unwrap();
    let (windows, production) = first.plan().unwrap();
    assert_eq!(windows, plan(hours, 24, 4).unwrap(), "the newest final hours evaluate");
    assert_eq!(windows.train.1, windows.eval.0, "the candidate never trained on its evaluation hours");
    assert_eq!(production, None);
    let (v1, parent, cold) = train_record(&first);
    assert_eq!((v1, parent), (1, None));
    assert_eq!(cold.as_deref(), Some("no production version yet"));
    let verdict = first.verdict().unwrap();
    assert_eq!(verdict.decision, Decision::Blessed, "{verdict:?}");
    assert_eq!(verdict.checks.len(), 3, "the first model is judged by value gates alone: {:?}", verdict.checks);
    // --promote: production points at it; the audit log says why; the decision is with the version.
    let state = registry.state("ctr").await.unwrap();
    assert_eq!(state.aliases.get(PRODUCTION), Some(&v1));
    assert!(state.reason.starts_with("retrain cycle 1: version 1 blessed: AUC"), "{}", state.reason);
    let stored = dir.path().join("registry/models/ctr/reports/00000001/retrain-decision.json");
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(stored).unwrap()).unwrap();
    assert_eq!(stored["decision"], "blessed");
    let manifest = registry.version("ctr", v1).await.unwrap();
    assert_eq!(manifest.tags.get(CYCLE_TAG).map(String::as_str), Some("1"));

    // Six more hours: the next cycle moves its windows, warm-starts from production and is
    // judged against it, slices included.
    history(&mut world, &log, 0.25).await;
    let second = finished(&retrainer).await;
    assert_eq!(second.id, 2);
    let (next_windows, production) = second.plan().unwrap();
    assert!(next_windows.eval.1 > windows.eval.1, "{next_windows:?} after {windows:?}");
    assert_eq!(production, Some(v1));
    let (v2, parent, cold) = train_record(&second);
    assert_eq!((v2, parent, cold), (2, Some(v1), None), "warm-started from production");
    let verdict = second.verdict().unwrap();
    assert_eq!(verdict.against_production, Some(v1));
    assert!(verdict.checks.iter().any(|c| c.gate == "ne improvement vs production"), "{:?}", verdict.checks);
    assert!(verdict.checks.iter().any(|c| c.gate.starts_with("slice ne vs production: ")), "{:?}", verdict.checks);
    let audit = registry.history("ctr").await.unwrap();
    let entries: Vec<&str> =
        audit.iter().map(|s| s.reason.as_str()).filter(|r| r.starts_with("retrain cycle")).collect();
    assert_eq!(entries.len(), 2, "one audit entry per cycle: {entries:?}");
    let history = cycles(&registry, "ctr").await.unwrap();
    assert_eq!(history.iter().map(|c| (c.id, c.is_done())).collect::<Vec<_>>(), vec![(1, true), (2, true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_trained_on_shuffled_labels_is_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let true_location = dir.path().join("log").display().to_string();
    let true_log = TrainingLog::open(&true_location).unwrap();
    history(&mut world(), &true_log, 1.5).await;

    // The same examples, their labels shuffled among the training hours; the evaluation hours
    // keep the truth.
    let windows = plan(final_hours(&true_location).await.unwrap().unwrap(), 24, 4).unwrap();
    let shuffled_location = dir.path().join("shuffled").display().to_string();
    let shuffled_log = TrainingLog::open(&shuffled_location).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for commit in true_log.all_commits().await.unwrap() {
        let mut examples = true_log.read(std::slice::from_ref(&commit)).await.unwrap();
        let training: Vec<usize> =
            (0..examples.len()).filter(|&i| examples[i].impression.event_time_ms < windows.eval.0).collect();
        let mut labels: Vec<(u32, Option<i64>)> =
            training.iter().map(|&i| (examples[i].clicks, examples[i].first_click_ms)).collect();
        for i in (1..labels.len()).rev() {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            labels.swap(i, (seed >> 33) as usize % (i + 1));
        }
        for (&i, (clicks, first)) in training.iter().zip(labels) {
            (examples[i].clicks, examples[i].first_click_ms) = (clicks, first);
        }
        let request = CommitRequest {
            partition: commit.partition,
            seq: commit.seq,
            checkpoint: commit.checkpoint.clone(),
            late_clicks: 0,
            orphan_clicks: 0,
        };
        shuffled_log.commit(request, examples).await.unwrap();
    }

    // The first model: the value gates refuse it.
    let fresh = open_registry(dir.path(), "fresh");
    let cycle = finished(&retrainer(&fresh, &shuffled_location, true)).await;
    let verdict = cycle.verdict().unwrap();
    assert_eq!(verdict.decision, Decision::Refused, "{verdict:?}");
    assert!(verdict.reasons.iter().any(|r| r.starts_with("auc is 0.")), "{:?}", verdict.reasons);
    assert_eq!(fresh.state("ctr").await.unwrap().aliases.get(PRODUCTION), None, "no alias moves");
    let audit = fresh.state("ctr").await.unwrap();
    assert!(audit.reason.starts_with("retrain cycle 1: version 1 refused: auc is"), "{}", audit.reason);

    // Against a production trained on the truth: refused again, production stays.
    let registry = open_registry(dir.path(), "registry");
    let good = finished(&retrainer(&registry, &true_location, true)).await;
    assert_eq!(good.verdict().unwrap().decision, Decision::Blessed);
    let cycle = finished(&retrainer(&registry, &shuffled_location, true)).await;
    let verdict = cycle.verdict().unwrap();
    assert_eq!(verdict.decision, Decision::Refused, "{verdict:?}");
    assert!(
        verdict.reasons.iter().any(|r| r.starts_with("ne improvement vs production is -")),
        "{:?}",
        verdict.reasons
    );
    assert_eq!(registry.state("ctr").await.unwrap().aliases.get(PRODUCTION), Some(&1));
    assert_eq!(registry.state("ctr").await.unwrap().aliases.get("candidate"), None);
}

/// A small config for the `adrank` processes of a test, in `dir`; `extra` is appended (TOML).
fn write_config(dir: &Path, log: &Path, extra: &str) {
    let extra = format!(
        r#"
[training]
epochs = 1
threads = 1
shuffle_buffer = 5000
mpi_launcher = "mpirun --allow-run-as-root --oversubscribe"
[training.model]
kind = "logistic"
[retrain]
train_hours = 24
eval_hours = 4
lease_secs = 3
poll_secs = 1
{extra}
[retrain.gates]
calibration_min = 0.7
calibration_max = 1.4
min_examples = 2000
min_clicks = 40
min_slice_examples = 2000
"#
    );
    let config = adrank_testkit::adrank_config(&dir.join("registry"), log, &extra);
    std::fs::write(dir.join("adrank.toml"), config).unwrap();
}

/// `adrank` with its own small config in `dir`.
fn adrank(dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_adrank"));
    command.current_dir(adrank_testkit::workspace_root()).arg("--config").arg(dir.join("adrank.toml")).args(args);
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("ADRANK_")) {
        command.env_remove(var);
    }
    command.env("ADRANK_LOG", "info").stdin(Stdio::null()).kill_on_drop(true);
    command
}

/// Waits until the child's stderr shows `marker`; returns the lines read. The rest of stderr is
/// drained in the background so that the child never blocks on a full pipe.
async fn wait_for(child: &mut tokio::process::Child, marker: &str) -> Vec<String> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let hit = line.contains(marker);
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(found, Ok(true)), "no {marker:?} in stderr:\n{}", seen.join("\n"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_killed_inside_each_step_resumes_with_one_candidate_and_a_waiting_loop_takes_over() {
    let _heavy = adrank_testkit::heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("log");
    history(&mut world(), &TrainingLog::open(&location.display().to_string()).unwrap(), 1.5).await;
    write_config(dir.path(), &location, "");
    let registry = open_registry(dir.path(), "registry");

    for (n, step) in Step::ALL.iter().enumerate() {
        let id = n as u64 + 1;
        let mut holder = adrank(dir.path(), &["retrain"])
            .env("ADRANK_RETRAIN_STALL", step.name())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(&mut holder, &format!("stalled inside step {}", step.name())).await;
        // The stalled process holds the lease: a loop started now waits, and takes over once the
        // holder is killed (SIGKILL: no release, the lease must expire).
        // The last loop stays up after its cycle (no new hours start a second) for its metrics
        // to be read.
        let last = n + 1 == Step::ALL.len();
        let metrics = format!("127.0.0.1:{}", adrank_testkit::free_port());
        let mut args = vec!["retrain", "--loop", "--max-cycles", if last { "2" } else { "1" }];
        if last {
            args.extend(["--metrics-listen", metrics.as_str()]);
        }
        let mut waiting = adrank(dir.path(), &args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        wait_for(&mut waiting, "waiting: the retraining lease is held by").await;
        holder.kill().await.unwrap();
        if last {
            loop_metrics_pass_promtool(&registry, id, &metrics).await;
            waiting.kill().await.unwrap();
        } else {
            let status = tokio::time::timeout(Duration::from_secs(300), waiting.wait()).await.unwrap().unwrap();
            assert!(status.success(), "the loop that took over cycle {id} ({}) exited with {status}", step.name());
        }

        let cycle = cycles(&registry, "ctr").await.unwrap().pop().unwrap();
        assert_eq!((cycle.id, cycle.is_done()), (id, true), "killed in {}, the cycle was resumed", step.name());
        let tagged: Vec<u64> = registry
            .versions("ctr")
            .await
            .unwrap()
            .iter()
            .filter(|m| m.tags.get(CYCLE_TAG) == Some(&id.to_string()))
            .map(|m| m.version)
            .collect();
        assert_eq!(tagged, vec![cycle.version().unwrap()], "killed in {}: one candidate", step.name());
        let prefix = format!("retrain cycle {id}:");
        let audit = registry.history("ctr").await.unwrap();
        assert_eq!(
            audit.iter().filter(|s| s.reason.starts_with(&prefix)).count(),
            1,
            "killed in {}: one audit entry",
            step.name()
        );
    }

    let output = adrank(dir.path(), &["retrain", "history"]).stderr(Stdio::inherit()).output().await.unwrap();
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{table}");
    assert_eq!(table.lines().count(), 1 + Step::ALL.len(), "a header and one row per cycle:\n{table}");
    assert!(table.lines().skip(1).all(|l| l.contains("6/6 (done)")), "{table}");
}

/// Once cycle `id` is done, the loop's `/metrics` at `addr` passes promtool with the figures the
/// dashboard and the alerts read.
async fn loop_metrics_pass_promtool(registry: &Registry, id: u64, addr: &str) {
    let started = std::time::Instant::now();
    while !cycles(registry, "ctr").await.unwrap().last().is_some_and(|c| c.id == id && c.is_done()) {
        assert!(started.elapsed() < Duration::from_secs(300), "cycle {id} never finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let (_, _, page) = crate::serving_api::try_http(addr, "GET", "/metrics", "", b"").await.unwrap();
    crate::observability::check_metrics("adrank retrain --loop", &page);
    for name in [
        "adrank_retrain_cycles_total",
        "adrank_retrain_step_duration_seconds",
        "adrank_retrain_last_cycle_timestamp_seconds",
        "adrank_retrain_lease_held",
    ] {
        assert!(page.contains(name), "the loop exports no {name}:\n{page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_drifting_world_a_model_retrained_on_the_newest_days_beats_the_stale_production() {
    let _heavy = adrank_testkit::heavy().await;
    let Fixture { dir: _dir, location: _, log, mut world, registry, retrainer } = Fixture::new();
    history(&mut world, &log, 1.5).await;
    let stale = finished(&retrainer).await;
    assert_eq!(stale.verdict().unwrap().decision, Decision::Blessed);
    // A week passes unlogged: tastes drift, ads come and go. Then a day of fresh history.
    world.replay_baseline_days(7.0);
    history(&mut world, &log, 1.5).await;
    // This time without --promote, and with [retrain] rollout: a blessed candidate starts a
    // rollout against production instead.
    let retrainer = Retrainer {
        promote: false,
        retrain: RetrainConfig { rollout: true, ..retrainer.retrain.clone() },
        ..retrainer
    };
    let fresh = finished(&retrainer).await;
    let report = fresh.report().unwrap();
    let ne = |role: &str| report.rows.iter().find(|r| r.role == role).unwrap().overall.normalised_entropy;
    assert!(ne("candidate") < ne("baseline"), "retrained NE {} vs stale {}", ne("candidate"), ne("baseline"));
    let verdict = fresh.verdict().unwrap();
    assert_eq!(verdict.decision, Decision::Blessed, "{verdict:?}");
    let aliases = registry.state("ctr").await.unwrap().aliases;
    assert_eq!(
        (aliases.get(PRODUCTION), aliases.get("candidate")),
        (stale.version().as_ref(), fresh.version().as_ref())
    );
    let rollout = registry.rollout("ctr").await.unwrap().expect("the blessed candidate's rollout");
    assert_eq!((rollout.production, Some(rollout.candidate)), (stale.version().unwrap(), fresh.version()));
    assert!(rollout.is_shadow(), "it starts in shadow: {rollout:?}");
    assert!(rollout.reason.starts_with(&format!("retrain cycle {}:", fresh.id)), "{}", rollout.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_trains_on_two_mpi_ranks_and_only_the_lease_holder_may_publish() {
    let _heavy = adrank_testkit::heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("log");
    history(&mut world(), &TrainingLog::open(&location.display().to_string()).unwrap(), 1.5).await;
    write_config(dir.path(), &location, "ranks = 2");
    let registry = open_registry(dir.path(), "registry");

    let output = adrank(dir.path(), &["retrain"]).output().await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("shards [0] of 2") && stderr.contains("shards [1] of 2"), "{stderr}");
    assert!(stdout.contains("cycle 1: version 1 "), "{stdout}");
    let cycle = cycles(&registry, "ctr").await.unwrap().pop().unwrap();
    assert_eq!(cycle.version(), Some(1));
    let manifest = registry.version("ctr", 1).await.unwrap();
    assert_eq!(manifest.tags.get(CYCLE_TAG).map(String::as_str), Some("1"));
    let report = &manifest.training.as_ref().unwrap().report;
    assert_eq!(report["threads"], 1, "one thread per rank");

    // A training launched by a loop that has lost the lease does not publish.
    let (since, until) = (utc_hour(cycle.plan().unwrap().0.train.0), utc_hour(cycle.plan().unwrap().0.train.1));
    let args = ["train", "--since", &since, "--until", &until, "--lease-holder", "a-loop-that-lost-it"];
    let output = adrank(dir.path(), &args).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("not publishing: the retraining lease of `ctr` is no longer held by a-loop-that-lost-it"),
        "{stderr}"
    );
    assert_eq!(registry.versions("ctr").await.unwrap().len(), 1);
}
