//! Data-parallel training on OpenMPI: `mpirun -np 2 adrank train --distributed` trains, bit for
//! bit, the model one rank trains when it reads the same two shards, and a rank that dies fails
//! the run instead of publishing.

use std::{path::Path, process::Stdio};

use adrank_contracts::training_log::{TrainingLog, utc_hour};
use adrank_loadtest::{
    history::{HistoryOptions, write_history},
    world::{World, WorldConfig},
};
use adrank_registry::{Registry, RegistryConfig};
use adrank_trainer::{
    data::{LogWindow, Window},
    evaluate::{EvalRequest, evaluate},
};

const HOUR_MS: i64 = 3_600_000;

/// `mpirun` as root in a container: allowed, oversubscribed on two cores.
fn mpirun(dir: &Path, ranks: usize, args: &[&str]) -> tokio::process::Command {
    let launcher = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].into_iter().find(|p| Path::new(p).is_file());
    let launcher = launcher.expect("OpenMPI's mpirun is not installed: run ./dev.sh setup (Debian's openmpi-bin)");
    let mut command = tokio::process::Command::new(launcher);
    command
        .current_dir(adrank_testkit::workspace_root())
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks.to_string()])
        .arg(env!("CARGO_BIN_EXE_adrank"))
        .arg("--config")
        .arg(dir.join("adrank.toml"))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("ADRANK_")) {
        command.env_remove(var);
    }
    command
}

async fn run(mut command: tokio::process::Command) -> (bool, String) {
    let output = command.output().await.expect("mpirun starts");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ranks_train_bit_for_bit_the_model_one_rank_trains_on_the_same_shards() {
    let _heavy = adrank_testkit::heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("log");
    let log = TrainingLog::open(&location.display().to_string()).unwrap();
    let mut world = World::new(WorldConfig {
        users: 3_000,
        advertisers: 100,
        ads: 600,
        requests_per_hour: 800,
        ..WorldConfig::default()
    });
    let options = HistoryOptions {
        days: 0.75,
        attribution_window_ms: 15 * 60_000,
        allowed_lateness_ms: 10 * 60_000,
        commit_examples: 2_000,
    };
    let summary = write_history(&mut world, &log, options).await.unwrap();
    let start = summary.start_ms - summary.start_ms % HOUR_MS + HOUR_MS;
    let (since, until, end) = (start, start + 12 * HOUR_MS, start + 16 * HOUR_MS);
    let registry_dir = dir.path().join("registry");
    let config = adrank_testkit::adrank_config(
        &registry_dir,
        &location,
        r#"
[training]
epochs = 2
batch_size = 256
shuffle_buffer = 4000
stats_sample = 5000
[training.model]
kind = "dlrm"
embedding_dim = 8
bottom = [16]
top = [16]
wide = true
"#,
    );
    std::fs::write(dir.path().join("adrank.toml"), config).unwrap();
    let (since_text, until_text) = (utc_hour(since), utc_hour(until));
    let train = |ranks: usize, extra: &[&str]| {
        let mut args = vec!["train", "--distributed", "--threads", "1", "--since", &since_text, "--until", &until_text];
        args.extend(extra);
        mpirun(dir.path(), ranks, &args)
    };

    let (ok, two) = run(train(2, &["--reason", "two ranks"])).await;
    assert!(ok, "two ranks:\n{two}");
    // (mpirun interleaves the ranks' stderr, so only the parts that cannot be split are checked)
    assert!(two.contains("shards [0] of 2") && two.contains("shards [1] of 2"), "{two}");
    let (ok, one) = run(train(1, &["--shards", "2", "--reason", "one rank"])).await;
    assert!(ok, "one rank:\n{one}");
    assert!(one.contains("rank 0 of 1: shards [0, 1] of 2"), "{one}");

    let registry = Registry::open(&RegistryConfig { location: registry_dir.display().to_string() }).unwrap();
    let versions = registry.versions("ctr").await.unwrap();
    assert_eq!(versions.len(), 2, "rank 0 alone publishes: {versions:#?}");
    let (a, b) = (&versions[0], &versions[1]);
    assert_eq!(a.training.as_ref().unwrap().examples, b.training.as_ref().unwrap().examples);
    assert_eq!(
        a.checkpoint.as_ref().unwrap().sha256,
        b.checkpoint.as_ref().unwrap().sha256,
        "two ranks and one rank on the same shards train the same weights, bit for bit"
    );
    assert_eq!(a.onnx.sha256, b.onnx.sha256);

    // Evaluated on the hours after: the same figures (within 1e-4, though they are equal).
    let held_out =
        LogWindow::open(&location.display().to_string(), Window { since_ms: until, until_ms: end }).await.unwrap();
    let (spec, ort) = (adrank_testkit::spec(), adrank_testkit::onnxruntime());
    let report =
        evaluate(&registry, EvalRequest { data: &held_out, spec: &spec, ort: &ort, candidate: a, baseline: Some(b) })
            .await
            .unwrap();
    let (x, y) = (&report.rows[0].overall, &report.rows[1].overall);
    assert!(x.auc > 0.6, "{report:#?}");
    for (what, p, q) in [
        ("auc", x.auc, y.auc),
        ("log loss", x.log_loss, y.log_loss),
        ("ne", x.normalised_entropy, y.normalised_entropy),
    ] {
        assert!((p - q).abs() <= 1e-4, "{what}: {p} vs {q}");
    }

    // A rank that dies, or whose training fails, fails the run (none left waiting in an
    // exchange): nothing is published.
    for (hook, rank) in
        [("ADRANK_TRAIN_DIE_RANK", "1"), ("ADRANK_TRAIN_FAIL_RANK", "0"), ("ADRANK_TRAIN_FAIL_RANK", "1")]
    {
        let mut failing = train(2, &["--reason", "fails"]);
        failing.env(hook, rank);
        let (ok, text) = tokio::time::timeout(std::time::Duration::from_secs(300), run(failing))
            .await
            .unwrap_or_else(|_| panic!("{hook}={rank}: the run hung"));
        assert!(!ok, "{hook}={rank}: the run must fail:\n{text}");
        let told = if hook == "ADRANK_TRAIN_FAIL_RANK" { "ending every rank" } else { "dying on purpose" };
        assert!(text.contains(told), "{hook}={rank}: {told:?} missing:\n{text}");
        assert_eq!(registry.versions("ctr").await.unwrap().len(), 2, "{hook}={rank}: nothing published:\n{text}");
    }
}
