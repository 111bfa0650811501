//! `adrank doctor`: is every dependency there, and if not, what to do about it.

use std::{future::Future, process::ExitCode, time::Duration};

use adrank_featurestore::{kafka, online};
use adrank_registry::{runtime, store};

use crate::{
    config::Loaded,
    table::{Table, plural},
};

/// Check every dependency and print one row each.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// The outcome of one check.
#[derive(Debug)]
pub(super) enum Outcome {
    Ok(String),
    /// Failed; `required` says whether that fails `doctor`.
    Failed {
        detail: String,
        fix: String,
        required: bool,
    },
}

impl Outcome {
    fn failed(detail: impl ToString, fix: &str) -> Self {
        Self::Failed { detail: detail.to_string(), fix: fix.into(), required: true }
    }

    fn optional(self) -> Self {
        match self {
            Self::Failed { detail, fix, .. } => Self::Failed { detail, fix, required: false },
            ok => ok,
        }
    }
}

/// A slow dependency must not hang `doctor`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) async fn bounded(check: impl Future<Output = Outcome>) -> Outcome {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Outcome::failed(format!("no answer within {CHECK_TIMEOUT:?}"), "check the address"))
}

pub(crate) async fn run(_args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let config = &loaded.config;
    let (ort, (broker, topics), redis, registry, mpi, tansu) = tokio::join!(
        bounded(check_onnxruntime(loaded)),
        check_kafka(loaded),
        bounded(check_redis(loaded)),
        bounded(check_registry(loaded)),
        bounded(check_mpi(&config.training.mpi_launcher)),
        bounded(async { check_tansu(loaded) }),
    );
    let gpu = bounded(check_gpu()).await;
    let config_row = Outcome::Ok(match &loaded.file {
        Some(file) if loaded.overrides.is_empty() => file.display().to_string(),
        Some(file) => format!("{} + {}", file.display(), loaded.overrides.join(", ")),
        None => "built-in defaults (no config/adrank.toml here)".into(),
    });
    let rows = [
        ("config", config_row),
        ("onnxruntime", ort),
        ("kafka broker", broker),
        ("kafka topics", topics),
        ("redis", redis),
        ("registry", registry),
        ("mpi launcher", mpi.optional()),
        ("tansu (for up)", tansu.optional()),
        ("gpu", gpu.optional()),
    ];
    let mut table = Table::new(["CHECK", "STATUS", "DETAIL", "FIX"]);
    let mut failed = false;
    for (name, outcome) in rows {
        let (status, detail, fix) = match outcome {
            Outcome::Ok(detail) => ("ok", detail, String::new()),
            Outcome::Failed { detail, fix, required: true } => {
                failed = true;
                ("FAIL", detail, fix)
            }
            Outcome::Failed { detail, fix, required: false } => ("warn", detail, fix),
        };
        table.row(vec![name.into(), status.into(), detail, fix]);
    }
    print!("{}", table.render());
    if failed {
        println!("\nadrank doctor: a required dependency is missing (see FIX above)");
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

async fn check_onnxruntime(loaded: &Loaded) -> Outcome {
    let config = loaded.config.onnxruntime.clone();
    match tokio::task::spawn_blocking(move || runtime::init(&config)).await {
        Ok(Ok(info)) => Outcome::Ok(format!("{} from {}", info.version, info.path.display())),
        Ok(Err(e)) => Outcome::failed(e, "run ./dev.sh setup, or set onnxruntime.library_path or ORT_DYLIB_PATH"),
        Err(e) => Outcome::failed(format!("loading ONNX Runtime crashed: {e}"), "check the library file"),
    }
}

pub(super) async fn check_kafka(loaded: &Loaded) -> (Outcome, Outcome) {
    let config = &loaded.config.kafka;
    let fix = "run `adrank up`, or set kafka.brokers to a running cluster";
    let unreachable = || Outcome::failed("broker unreachable", "fix the broker first");
    let state = match tokio::time::timeout(CHECK_TIMEOUT, kafka::admin::describe(config)).await {
        Ok(Ok(state)) => state,
        Ok(Err(e)) => return (Outcome::failed(e, fix), unreachable()),
        Err(_) => return (Outcome::failed(format!("no answer within {CHECK_TIMEOUT:?}"), fix), unreachable()),
    };
    let broker =
        Outcome::Ok(format!("{} at {}", plural(state.brokers.len() as u64, "broker"), state.brokers.join(", ")));
    let missing: Vec<&str> = state.missing().map(|t| t.name.as_str()).collect();
    let topics = if !missing.is_empty() {
        Outcome::failed(format!("missing: {}", missing.join(", ")), "run `adrank up` (it creates them)")
    } else {
        let differ: Vec<String> = state
            .topics
            .iter()
            .filter(|t| t.partitions != Some(t.wanted_partitions))
            .map(|t| {
                format!("{} has {} partitions, config says {}", t.name, t.partitions.unwrap_or(0), t.wanted_partitions)
            })
            .collect();
        if differ.is_empty() {
            Outcome::Ok(format!("all {} present", state.topics.len()))
        } else {
            Outcome::failed(differ.join("; "), "repartition the topics or change kafka.topics").optional()
        }
    };
    (broker, topics)
}

pub(super) async fn check_redis(loaded: &Loaded) -> Outcome {
    let config = &loaded.config.redis;
    match online::server_version(config).await {
        Ok(version) => Outcome::Ok(format!("{version} at {}", config.url)),
        Err(e) => Outcome::failed(e, "start redis-server, run `adrank up`, or set redis.url"),
    }
}

async fn check_registry(loaded: &Loaded) -> Outcome {
    let config = &loaded.config.registry;
    match store::check_writable(config).await {
        Ok(()) => Outcome::Ok(format!("{} is writable", config.location)),
        Err(e) => Outcome::failed(e, "make the location writable (for s3://, set AWS_* credentials)"),
    }
}

async fn check_mpi(launcher: &str) -> Outcome {
    let fix = "apt-get install openmpi-bin (needed only for multi-process training)";
    match tokio::process::Command::new(launcher).arg("--version").output().await {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            Outcome::Ok(text.lines().next().unwrap_or(launcher).trim().to_string())
        }
        Ok(out) => Outcome::failed(format!("`{launcher} --version` exited with {}", out.status), fix),
        Err(e) => Outcome::failed(format!("cannot run `{launcher}`: {e}"), fix),
    }
}

/// The CUDA devices, through the driver API loaded at run time; none is needed (models run on
/// the CPU), so the row says why there is none.
async fn check_gpu() -> Outcome {
    let fix = "none needed: models run on the CPU (docs/serving.md, CUDA)";
    match tokio::task::spawn_blocking(adrank_serving::gpu::devices).await {
        Ok(Ok(devices)) => {
            let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
            let listed: Vec<String> = devices
                .iter()
                .map(|d| {
                    let (major, minor) = d.compute_capability;
                    format!(
                        "{}: {} (compute {major}.{minor}, {:.1} GiB, {:.1} GiB in use)",
                        d.ordinal,
                        d.name,
                        gib(d.total_bytes),
                        gib(d.used_bytes)
                    )
                })
                .collect();
            let driver = adrank_serving::gpu::driver_version().unwrap_or_else(|| "unknown".into());
            Outcome::Ok(format!("{}; driver {driver}", listed.join("; ")))
        }
        Ok(Err(why)) => Outcome::failed(format!("no GPU: {why}"), fix),
        Err(e) => Outcome::failed(format!("no GPU: reading the devices failed: {e}"), fix),
    }
}

fn check_tansu(loaded: &Loaded) -> Outcome {
    match kafka::local_broker::find_tansu(loaded.config.stack.tansu_binary().as_deref()) {
        Ok(path) => Outcome::Ok(path.display().to_string()),
        Err(e) => Outcome::failed(e, "run ./dev.sh setup (needed only to start a local broker)"),
    }
}
