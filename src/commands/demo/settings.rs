//! The loop's settings in compressed time. The demo's traffic is a few hundred requests a
//! second on two cores, and its simulated clock runs about 360 times faster than the wall's, so
//! the production defaults (a cycle every 6 simulated hours, rollout steps of 10 minutes that
//! need thousands of impressions per arm) would show nothing in minutes. These are what the
//! demo's processes run with instead, each overridable by setting the variable beforehand.

use std::net::SocketAddr;

/// A setting for the demo's processes: the variable and its value.
type Setting = (String, String);

/// The loop's settings, for `serve` on `serve_addr`; `quick` is the smaller run.
pub(super) fn loop_settings(serve_addr: SocketAddr, quick: bool) -> Vec<Setting> {
    let min_new_hours = if quick { "2" } else { "3" };
    let mut settings: Vec<(&str, String)> = vec![
        // Serving follows rollout changes within a second, and shadows a quarter of
        // production's requests (so the shadow step has its sample in seconds).
        ("ADRANK_SERVING__REGISTRY_POLL_MS", "1000".into()),
        ("ADRANK_SERVING__SHADOW_SAMPLE", "0.25".into()),
        // Two cores run everything: slow replies must not count as failed ones.
        ("ADRANK_SERVING__DEFAULT_DEADLINE_MS", "1000".into()),
        ("ADRANK_INGEST__LOG_COMMIT_INTERVAL_MS", "1000".into()),
        // A cycle once `min_new_hours` simulated hours are final (tens of seconds of traffic),
        // trained on the newest day (every hour of the day: the world's CTR varies with it),
        // judged on the 2 hours after it; each blessed candidate goes to a rollout.
        ("ADRANK_RETRAIN__TRAIN_HOURS", "24".into()),
        ("ADRANK_RETRAIN__EVAL_HOURS", "2".into()),
        ("ADRANK_RETRAIN__MIN_NEW_HOURS", min_new_hours.into()),
        ("ADRANK_RETRAIN__EVERY_SECS", "0".into()),
        ("ADRANK_RETRAIN__POLL_SECS", "3".into()),
        ("ADRANK_RETRAIN__ROLLOUT", "true".into()),
        ("ADRANK_RETRAIN__ROLLOUT_PLAN", "[0, 25, 50, 100]".into()),
        // The controller looks every 2 s; a step lasts at least 10 s and needs 2,000 closed
        // impressions and 50 clicks per arm. A candidate passes once shown to lose less than 15%
        // of production's CTR, and the test is tuned to effects of 25%: at the demo's traffic
        // the default 3% margin would need about half a million impressions per arm.
        ("ADRANK_ROLLOUT__ANALYSIS_INTERVAL_SECS", "2".into()),
        ("ADRANK_ROLLOUT__MIN_STEP_SECS", "10".into()),
        ("ADRANK_ROLLOUT__MIN_IMPRESSIONS", "2000".into()),
        ("ADRANK_ROLLOUT__MIN_CLICKS", "50".into()),
        ("ADRANK_ROLLOUT__CTR_MARGIN", "0.15".into()),
        ("ADRANK_ROLLOUT__EFFECT", "0.25".into()),
        ("ADRANK_ROLLOUT__MIN_REQUESTS", "200".into()),
        ("ADRANK_ROLLOUT__SERVING_METRICS", format!("[\"http://{serve_addr}/metrics\"]")),
    ];
    // Candidates train across two MPI ranks where OpenMPI is installed (as root in a container
    // it must be allowed; two ranks on two cores oversubscribe).
    if mpirun_present() {
        let root = nix::unistd::Uid::effective().is_root();
        let launcher = format!("mpirun --oversubscribe{}", if root { " --allow-run-as-root" } else { "" });
        settings.push(("ADRANK_RETRAIN__RANKS", "2".into()));
        settings.push(("ADRANK_TRAINING__MPI_LAUNCHER", launcher));
    }
    settings
        .into_iter()
        .filter(|(key, _)| std::env::var_os(key).is_none())
        .map(|(key, value)| (key.to_string(), value))
        .collect()
}

/// Whether `mpirun` is on the PATH.
pub(super) fn mpirun_present() -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("mpirun").is_file()))
}

/// How many MPI ranks the loop trains on, as the settings say.
pub(super) fn ranks(settings: &[Setting]) -> u32 {
    let set = settings.iter().find(|(k, _)| k == "ADRANK_RETRAIN__RANKS").map(|(_, v)| v.clone());
    set.or_else(|| std::env::var("ADRANK_RETRAIN__RANKS").ok()).and_then(|v| v.parse().ok()).unwrap_or(1)
}
