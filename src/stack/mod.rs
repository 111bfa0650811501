//! The local stack for one machine: a tansu broker and, when none answers, a redis-server.
//!
//! `adrank up` starts what is missing and records each process it started in a pid file under
//! the state folder; `adrank down` stops exactly those processes and nothing else.

mod config;
pub(crate) mod pidfile;

pub(crate) use config::{KafkaStorage, StackConfig};

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::Context as _;

/// Pid-file name of the local broker.
pub(crate) const BROKER: &str = "tansu";
/// Pid-file name of a Redis started by `up`.
pub(crate) const REDIS: &str = "redis-server";

/// A log file opened for appending, as the stdout and stderr of a child process.
pub(crate) fn log_output(log: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    Ok((file.try_clone()?.into(), file.into()))
}

/// Starts `command` in its own process group (so a Ctrl-C aimed at adrank leaves it running)
/// with stdout and stderr appended to `log`.
pub(crate) fn spawn_detached(command: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let (stdout, stderr) = log_output(log)?;
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    std::os::unix::process::CommandExt::process_group(command, 0);
    command.spawn().with_context(|| format!("cannot run {:?}", command.get_program()))
}
