//! `adrank up && adrank up && adrank doctor && adrank down`, as a user runs it.

use std::{
    path::Path,
    process::{Command, Output},
};

/// Runs the adrank binary in `cwd` with a clean `ADRANK_…` environment plus `env`.
pub(crate) fn adrank(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_adrank"));
    command.args(args).current_dir(cwd);
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("ADRANK_") || k == "ORT_DYLIB_PATH") {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command.output().expect("the adrank binary runs")
}

/// Runs its closure when dropped, also when the test panics.
struct Guard<F: FnMut()>(F);

impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn is_running(pid: u32) -> bool {
    // A zombie has exited; only its parent's bookkeeping is left.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

fn recorded_pid(state: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(state.join("pids").join(format!("{name}.pid"))).ok()?;
    let record: toml::Table = text.parse().unwrap();
    Some(record["pid"].as_integer().unwrap() as u32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_up_doctor_down() {
    let redis = adrank_testkit::redis::TestRedis::new().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = adrank_testkit::free_port();
    let config = format!(
        "[kafka]\nbrokers = \"127.0.0.1:{port}\"\n\n[redis]\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\n\n\
         [registry]\nlocation = \"{registry}\"\n\n[ingest]\ntraining_log = \"{log}\"\n\n[onnxruntime]\nlibrary_path = \"{ort}\"\n\n\
         [stack]\nstate_dir = \"{state}\"\n",
        url = redis.config.url,
        prefix = redis.config.key_prefix,
        registry = dir.path().join("registry").display(),
        log = dir.path().join("log").display(),
        ort = adrank_testkit::onnxruntime().library_path,
        state = state.display(),
    );
    let config_path = dir.path().join("adrank.toml");
    std::fs::write(&config_path, config).unwrap();
    let run_with = |command: &str, more: &[&str]| {
        let mut args = vec!["--config", config_path.to_str().unwrap(), command];
        args.extend_from_slice(more);
        adrank(&args, dir.path(), &[])
    };
    let run = |command: &str| run_with(command, &[]);
    // Whatever fails below, the broker `up` starts (detached, by design) must not outlive the test.
    let _down = Guard(|| drop(run("down")));

    let first = run("up");
    assert!(first.status.success(), "first up failed:\n{}", text(&first));
    let pid = recorded_pid(&state, "tansu").expect("up records the broker it started");
    assert!(is_running(pid));
    let first_text = text(&first);
    assert!(first_text.contains("kafka broker  started  tansu pid"), "{first_text}");
    assert_eq!(first_text.matches("created with").count(), 5, "{first_text}");
    assert!(
        first_text.contains("not started by adrank; left alone"),
        "the machine's Redis is used, not replaced:\n{first_text}"
    );
    assert_eq!(recorded_pid(&state, "redis-server"), None);

    let second = run("up");
    let second_text = text(&second);
    assert!(second.status.success(), "second up failed:\n{second_text}");
    assert!(
        !second_text.contains("  started  ") && !second_text.contains("created with"),
        "the second up changes nothing:\n{second_text}"
    );
    assert!(second_text.contains(&format!("pid {pid}, started by an earlier `adrank up`")), "{second_text}");
    assert_eq!(recorded_pid(&state, "tansu"), Some(pid), "no second broker");

    let doctor = run("doctor");
    let doctor_text = text(&doctor);
    assert!(doctor.status.success(), "doctor is not all green:\n{doctor_text}");
    assert!(!doctor_text.contains("FAIL"), "{doctor_text}");
    assert!(
        doctor_text.contains(adrank_registry::runtime::ORT_VERSION),
        "doctor prints the ORT version:\n{doctor_text}"
    );
    // Every machine gets a GPU row: its devices, or why there are none (a warning only).
    let gpu =
        doctor_text.lines().find(|l| l.starts_with("gpu ")).unwrap_or_else(|| panic!("no gpu row:\n{doctor_text}"));
    let driver = std::path::Path::new("/proc/driver/nvidia/version").exists();
    let expected = if driver {
        gpu.contains(" ok ") || gpu.contains("no GPU: ")
    } else {
        gpu.contains("no GPU: no NVIDIA driver")
    };
    assert!(expected && !gpu.contains("FAIL"), "{gpu}");

    let down = run("down");
    assert!(down.status.success(), "down failed:\n{}", text(&down));
    assert!(!is_running(pid), "the broker is still running after down");
    assert_eq!(recorded_pid(&state, "tansu"), None, "down forgets what it stopped");

    let again = run("down");
    assert!(again.status.success() && text(&again).contains("not started by `adrank up`"), "{}", text(&again));
    let doctor = run("doctor");
    assert_eq!(doctor.status.code(), Some(1), "doctor fails once the broker is gone:\n{}", text(&doctor));

    // The broker's sqlite storage keeps the topics across a restart.
    let restarted = run("up");
    let restarted_text = text(&restarted);
    assert!(restarted.status.success(), "{restarted_text}");
    assert!(restarted_text.contains("kafka broker  started"), "{restarted_text}");
    assert!(!restarted_text.contains("created with"), "topics survive a broker restart:\n{restarted_text}");
    assert_eq!(restarted_text.matches("kafka topic   running").count(), 5, "{restarted_text}");

    // `down --wipe` starts over: the broker's topics, the registry, the training log and the
    // Redis keys under the prefix are gone; a key outside it stays.
    for folder in ["registry", "log"] {
        std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        std::fs::write(dir.path().join(folder).join("kept-until-wiped"), "x").unwrap();
    }
    let mut connection = redis::Client::open(redis.config.url.as_str()).unwrap().get_connection().unwrap();
    let outside = format!("not-{}outside", redis.config.key_prefix);
    redis::cmd("SET").arg(format!("{}u:u1", redis.config.key_prefix)).arg(1).exec(&mut connection).unwrap();
    redis::cmd("SET").arg(&outside).arg(1).exec(&mut connection).unwrap();
    let _outside = Guard(|| {
        let _ = redis::cmd("DEL").arg(&outside).exec(&mut connection);
    });
    let wiped = run_with("down", &["--wipe"]);
    let wiped_text = text(&wiped);
    assert!(wiped.status.success(), "{wiped_text}");
    assert!(wiped_text.contains("kafka broker  stopped"), "{wiped_text}");
    assert!(wiped_text.contains("1 key under"), "{wiped_text}");
    for gone in [state.clone(), dir.path().join("registry"), dir.path().join("log")] {
        assert!(!gone.exists(), "{} survived the wipe:\n{wiped_text}", gone.display());
    }
    assert!(redis.keys().is_empty(), "keys under the prefix survived: {:?}", redis.keys());
    let mut check = redis::Client::open(redis.config.url.as_str()).unwrap().get_connection().unwrap();
    let kept: Option<String> = redis::cmd("GET").arg(&outside).query(&mut check).unwrap();
    assert_eq!(kept.as_deref(), Some("1"), "a key outside the prefix is left alone");
    let fresh = run("up");
    assert_eq!(text(&fresh).matches("created with").count(), 5, "the topics start over:\n{}", text(&fresh));
}

/// With no Redis at the configured address, `up` starts one (and records it); `down` stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_redis_when_none_answers_and_down_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (kafka_port, redis_port) = (adrank_testkit::free_port(), adrank_testkit::free_port());
    let config = format!(
        "[kafka]\nbrokers = \"127.0.0.1:{kafka_port}\"\n\n[redis]\nurl = \"redis://127.0.0.1:{redis_port}/0\"\n\n\
         [stack]\nstate_dir = \"{}\"\nkafka_storage = \"memory\"\n",
        state.display()
    );
    let config_path = dir.path().join("adrank.toml");
    std::fs::write(&config_path, config).unwrap();
    let run_with = |command: &str, more: &[&str]| {
        let mut args = vec!["--config", config_path.to_str().unwrap(), command];
        args.extend_from_slice(more);
        adrank(&args, dir.path(), &[])
    };
    let run = |command: &str| run_with(command, &[]);
    let _down = Guard(|| drop(run("down")));

    let up = run("up");
    assert!(up.status.success(), "{}", text(&up));
    assert!(text(&up).contains("redis         started  redis-server"), "{}", text(&up));
    let redis_pid = recorded_pid(&state, "redis-server").expect("up records the redis-server it started");
    assert!(is_running(redis_pid));
    let config =
        adrank_featurestore::RedisConfig { url: format!("redis://127.0.0.1:{redis_port}/0"), ..Default::default() };
    adrank_featurestore::online::server_version(&config).await.expect("the started Redis answers");

    let down = run("down");
    assert!(down.status.success(), "{}", text(&down));
    assert!(!is_running(redis_pid), "redis-server still runs after down");
    assert!(adrank_featurestore::online::server_version(&config).await.is_err());
}
