//! `adrank down`: stop what `adrank up` started, by pid, and nothing else.

use std::{process::ExitCode, time::Duration};

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
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let pids = PidFiles::new(&loaded.config.stack.state_dir);
    let grace = Duration::from_secs(args.grace_secs);
    let mut table = Table::new(["COMPONENT", "STATE", "DETAIL"]);
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
                let how = if killed { format!(" (SIGKILL after {grace:?})") } else { String::new() };
                ("stopped", format!("pid {}{how}", record.pid))
            }
        };
        table.row(vec![component.into(), state.into(), detail]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}
