//! The Kubernetes manifests under deploy/ pass Kubernetes' own schemas (kubernetes-validate,
//! installed by ./dev.sh setup) and adrank's own command-line parser, and the validator refuses
//! broken copies of them.

use std::path::{Path, PathBuf};

fn validator() -> (PathBuf, PathBuf) {
    let root = adrank_testkit::workspace_root();
    let python = root.join(".adrank/tools/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run ./dev.sh setup (it installs kubernetes-validate there)",
        python.display()
    );
    (python, root.join("deploy/validate.py"))
}

fn validate(files: &[&Path]) -> (bool, String) {
    let (python, script) = validator();
    let output = std::process::Command::new(python)
        .arg(script)
        .args(["--adrank", env!("CARGO_BIN_EXE_adrank")])
        .args(files)
        .output()
        .expect("the validator starts");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn the_shipped_manifests_are_valid_and_broken_ones_are_refused() {
    let dir = adrank_testkit::workspace_root().join("deploy/kubernetes");
    let (loop_file, mpijob) = (dir.join("retrain-loop.yaml"), dir.join("train-mpijob.yaml"));
    let (ok, text) = validate(&[&loop_file, &mpijob]);
    assert!(ok, "{text}");
    for kind in ["Deployment adrank-retrain", "CronJob adrank-retrain-hourly", "MPIJob adrank-train"] {
        assert!(text.contains(&format!("{kind}: valid")), "{text}");
    }

    let scratch = tempfile::tempdir().unwrap();
    let broken = |from: &Path, old: &str, new: &str| {
        let text = std::fs::read_to_string(from).unwrap();
        assert!(text.contains(old), "{old:?} is in {}", from.display());
        let path = scratch.path().join(format!("broken-{}.yaml", old.len()));
        std::fs::write(&path, text.replacen(old, new, 1)).unwrap();
        path
    };
    for (file, old, new, reason) in [
        (&loop_file, "concurrencyPolicy: Forbid", "concurrencyPolicy: 5", "is not of type"),
        (&loop_file, "terminationGracePeriodSeconds: 60", "terminationGracePeriod: 60", "Additional properties"),
        (&loop_file, "\"--loop\"", "\"--looop\"", "does not parse"),
        (&mpijob, "\"-np\", \"4\"", "\"-np\", \"3\"", "mpirun -np 3, but 4 workers x 1 slots"),
        (&mpijob, "- name: launcher", "- title: launcher", "'name' is a required property"),
    ] {
        let (ok, text) = validate(&[&broken(file, old, new)]);
        assert!(!ok && text.contains(reason), "{new:?} must be refused with {reason:?}:\n{text}");
    }
}
