//! `adrank down`: stop what `adrank up` started, by pid, and nothing else; with `--wipe`, also
//! remove what the stack and the loop kept, so the next `adrank up` starts from nothing.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use adrank_contracts::storage::Location;
use anyhow::Context as _;

use crate::{
    config::Loaded,
    stack::{
        BROKER, REDIS,
        pidfile::{Liveness, PidFiles},
    },
    table::Table,
};

/// Stop the local stack.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
    /// Then delete what the stack and the loop kept: the state folder (the broker's topics when
    /// `adrank up` started it), the registry and the training log when they are local folders,
    /// and the Redis keys under `redis.key_prefix`. Reports stay. For starting over (a second
    /// `adrank demo`); never on a deployment's data.
    #[arg(long)]
    wipe: bool,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let pids = PidFiles::new(&loaded.config.stack.state_dir);
    let grace = Duration::from_secs(args.grace_secs);
    let mut table = Table::new(["COMPONENT", "STATE", "DETAIL"]);
    let mut redis_stopped = false;
    for (component, name) in [("kafka broker", BROKER), ("redis", REDIS)] {
        let (state, detail) = match pids.read(name)? {
            None => ("-", "not started by `adrank up`; left alone".to_string()),
            Some(record) if record.liveness() == Liveness::Gone => {
                pids.remove(name)?;
                ("stopped", format!("pid {} had already exited", record.pid))
            }
            Some(record) => {
                let killed = tokio::task::spawn_blocking({
                    let record = record.clone();
                    move || record.stop(grace)
                })
                .await??;
                pids.remove(name)?;
                redis_stopped |= name == REDIS;
                let how = if killed { format!(" (SIGKILL after {grace:?})") } else { String::new() };
                ("stopped", format!("pid {}{how}", record.pid))
            }
        };
        table.row(vec![component.into(), state.into(), detail]);
    }
    if args.wipe {
        wipe(loaded, redis_stopped, &mut table).await?;
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

/// Deletes the stack's state, the local registry and training log, and the Redis keys.
async fn wipe(loaded: &Loaded, redis_stopped: bool, table: &mut Table) -> anyhow::Result<()> {
    let config = &loaded.config;
    let folders = [
        ("state", Some(config.stack.state_dir.clone())),
        ("registry", local(&config.registry.location)),
        ("training log", local(&config.ingest.training_log)),
    ];
    for (what, folder) in folders {
        let detail = match folder {
            None => "not a local folder; left alone".to_string(),
            Some(dir) if !dir.exists() => format!("{} (absent)", dir.display()),
            Some(dir) => {
                std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
                format!("removed {}", dir.display())
            }
        };
        table.row(vec![what.into(), "wiped".into(), detail]);
    }
    // The redis-server `adrank up` starts keeps nothing on disk: stopping it wiped it.
    let detail = if redis_stopped {
        "the redis-server `adrank up` started is stopped, and kept nothing".to_string()
    } else {
        let deleted = adrank_featurestore::online::delete_all(&config.redis)
            .await
            .context("cannot delete the Redis keys (is Redis up?)")?;
        let plural = if deleted == 1 { "" } else { "s" };
        format!("{deleted} key{plural} under `{}` deleted", config.redis.key_prefix)
    };
    table.row(vec!["redis keys".into(), "wiped".into(), detail]);
    Ok(())
}

/// The folder of a local location.
fn local(location: &str) -> Option<PathBuf> {
    match Location::parse(location)? {
        Location::Local(dir) => Some(dir),
        Location::S3 { .. } => None,
    }
}
