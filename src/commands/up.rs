//! `adrank up`: start the local stack for one machine.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use adrank_featurestore::{
    KafkaConfig,
    kafka::{
        admin::{self, TopicOutcome},
        local_broker::{self, LocalBroker, Storage},
    },
    online,
};
use anyhow::{Context as _, bail};

use crate::{
    config::{AdrankConfig, Loaded},
    stack::{
        BROKER, KafkaStorage, REDIS, log_output,
        pidfile::{Liveness, PidFiles, PidRecord},
        spawn_detached,
    },
    table::{Table, plural},
};

/// Start the local stack.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// How a component came to be running.
enum State {
    Started(String),
    Running(String),
}

pub(crate) async fn run(_args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let config = &loaded.config;
    let state_dir = &config.stack.state_dir;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create the state folder {}", state_dir.display()))?;
    // Absolute, because the broker's storage URL must not depend on where it is started from.
    let state_dir = state_dir.canonicalize().with_context(|| format!("cannot resolve {}", state_dir.display()))?;
    let pids = PidFiles::new(&state_dir);

    let mut table = Table::new(["COMPONENT", "STATE", "DETAIL"]);
    let mut add = |name: &str, state: State| {
        let (word, detail) = match state {
            State::Started(detail) => ("started", detail),
            State::Running(detail) => ("running", detail),
        };
        table.row(vec![name.into(), word.into(), detail]);
    };
    add("kafka broker", ensure_broker(config, &state_dir, &pids).await?);
    let outcomes = admin::ensure_topics(&config.kafka).await?;
    for outcome in outcomes {
        match outcome {
            TopicOutcome::Created { name, partitions } => {
                add("kafka topic", State::Started(format!("{name}: created with {}", plural(partitions, "partition"))));
            }
            TopicOutcome::Existed { name, partitions } => {
                add("kafka topic", State::Running(format!("{name}: {}", plural(partitions, "partition"))));
            }
        }
    }
    add("redis", ensure_redis(config, &state_dir, &pids).await?);
    print!("{}", table.render());
    println!("state: {}  (stop with `adrank down`)", state_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Whether an earlier `up` started `name` and it still runs; forgets it when it does not.
fn recorded(pids: &PidFiles, name: &str) -> anyhow::Result<Option<PidRecord>> {
    match pids.read(name)? {
        Some(record) if record.liveness() == Liveness::Ours => Ok(Some(record)),
        Some(_) => {
            pids.remove(name)?;
            Ok(None)
        }
        None => Ok(None),
    }
}

fn already(record: Option<PidRecord>, what: &str) -> State {
    match record {
        Some(record) => State::Running(format!("{what} (pid {}, started by an earlier `adrank up`)", record.pid)),
        None => State::Running(format!("{what} (not started by adrank; left alone)")),
    }
}

async fn ensure_broker(config: &AdrankConfig, state_dir: &std::path::Path, pids: &PidFiles) -> anyhow::Result<State> {
    let ours = recorded(pids, BROKER)?;
    let quick = KafkaConfig { request_timeout_ms: 2_000, ..config.kafka.clone() };
    if admin::describe(&quick).await.is_ok() {
        return Ok(already(ours, &format!("answers at {}", config.kafka.brokers)));
    }
    if let Some(record) = ours {
        bail!(
            "the tansu broker started by an earlier `adrank up` (pid {}) runs but does not answer at {}; \
             run `adrank down` and `adrank up` again (its log: {})",
            record.pid,
            config.kafka.brokers,
            state_dir.join("tansu.log").display()
        );
    }
    let Some(addr) = config.kafka.first_broker_addr().filter(|a| a.ip().is_loopback()) else {
        bail!(
            "no Kafka broker answers at {} and `adrank up` starts one only on a loopback ip:port; \
             start the cluster or set kafka.brokers",
            config.kafka.brokers
        );
    };
    if tokio::net::TcpStream::connect(addr).await.is_ok() {
        bail!("something listens on {addr} but does not answer as a Kafka broker; stop it or change kafka.brokers");
    }
    let storage = match config.stack.kafka_storage {
        KafkaStorage::Sqlite => Storage::Sqlite(state_dir.join("tansu.db")),
        KafkaStorage::Memory => Storage::Memory,
    };
    let broker = LocalBroker {
        binary: local_broker::find_tansu(config.stack.tansu_binary().as_deref())?,
        addr,
        storage: storage.clone(),
        die_with_parent: false,
    };
    let timeout = Duration::from_secs(config.stack.start_timeout_secs);
    let log = state_dir.join("tansu.log");
    let (stdout, stderr) = log_output(&log)?;
    let child = broker.start(stdout, stderr, timeout).await?;
    pids.write(BROKER, &PidRecord::of(child.id(), format!("{:?}", broker.command()))?)?;
    admin::wait_until_answering(&config.kafka, timeout)
        .await
        .with_context(|| format!("the new broker does not answer; see {}", log.display()))?;
    let storage = match storage {
        Storage::Sqlite(path) => path.display().to_string(),
        Storage::Memory => "memory".into(),
    };
    Ok(State::Started(format!("tansu pid {} on {addr}, storage {storage}", child.id())))
}

async fn ensure_redis(config: &AdrankConfig, state_dir: &std::path::Path, pids: &PidFiles) -> anyhow::Result<State> {
    let ours = recorded(pids, REDIS)?;
    if let Ok(version) = online::server_version(&config.redis).await {
        return Ok(already(ours, &format!("{version} answers at {}", config.redis.url)));
    }
    let Some(addr) = config.redis.tcp_addr().filter(|a| a.ip().is_loopback()) else {
        bail!(
            "no Redis answers at {} and `adrank up` starts one only on a loopback address; start it or set redis.url",
            config.redis.url
        );
    };
    let Some(binary) = on_path("redis-server") else {
        bail!("no Redis answers at {} and redis-server is not installed; run ./dev.sh setup", config.redis.url);
    };
    let data = state_dir.join("redis");
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let mut command = std::process::Command::new(&binary);
    command
        .args(["--bind", &addr.ip().to_string(), "--port", &addr.port().to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(&data);
    let log = state_dir.join("redis.log");
    let child = spawn_detached(&mut command, &log)?;
    pids.write(REDIS, &PidRecord::of(child.id(), format!("{command:?}"))?)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(config.stack.start_timeout_secs);
    loop {
        match online::server_version(&config.redis).await {
            Ok(version) => return Ok(State::Started(format!("redis-server {version} pid {} on {addr}", child.id()))),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("the new redis-server does not answer; see {}", log.display()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(program)).find(|p| p.is_file())
}
