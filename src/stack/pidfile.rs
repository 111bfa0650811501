//! Pid files for the processes `adrank up` starts.
//!
//! A pid alone is not enough to stop a process safely: after a reboot or a long time the number
//! may belong to someone else. Each record also keeps the process's start time (from
//! `/proc/<pid>/stat`), and a process is ours only when both match.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

/// One process started by `adrank up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PidRecord {
    pub(crate) pid: u32,
    /// Start time in clock ticks after boot, field 22 of `/proc/<pid>/stat`.
    pub(crate) start_ticks: u64,
    /// What it is, for people reading the file.
    pub(crate) command: String,
}

/// The state of a recorded process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Running, and it is the process that was recorded.
    Ours,
    /// Gone, or the pid now belongs to another process.
    Gone,
}

impl PidRecord {
    /// A record for a process that was just started.
    pub(crate) fn of(pid: u32, command: String) -> anyhow::Result<Self> {
        let start_ticks = start_ticks(pid).with_context(|| format!("process {pid} exited right after it started"))?;
        Ok(Self { pid, start_ticks, command })
    }

    /// Whether the recorded process still runs.
    pub(crate) fn liveness(&self) -> Liveness {
        match stat_fields(self.pid) {
            Some(fields) if start_ticks_of(&fields) == Some(self.start_ticks) && !is_zombie(&fields) => Liveness::Ours,
            _ => Liveness::Gone,
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`. Returns whether SIGKILL was needed.
    pub(crate) fn stop(&self, grace: Duration) -> anyhow::Result<bool> {
        let pid = Pid::from_raw(i32::try_from(self.pid).context("pid out of range")?);
        if self.liveness() == Liveness::Gone {
            return Ok(false);
        }
        kill(pid, Signal::SIGTERM).with_context(|| format!("cannot signal process {}", self.pid))?;
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if self.liveness() == Liveness::Gone {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill(pid, Signal::SIGKILL).with_context(|| format!("cannot kill process {}", self.pid))?;
        while self.liveness() == Liveness::Ours {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(true)
    }
}

/// The pid files of one state folder.
#[derive(Debug, Clone)]
pub(crate) struct PidFiles {
    dir: PathBuf,
}

impl PidFiles {
    pub(crate) fn new(state_dir: &Path) -> Self {
        Self { dir: state_dir.join("pids") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pid"))
    }

    /// The record for `name`, if `up` wrote one.
    pub(crate) fn read(&self, name: &str) -> anyhow::Result<Option<PidRecord>> {
        let path = self.path(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let record = toml::from_str(&text)
                    .with_context(|| format!("{} is not a pid file adrank wrote; delete it", path.display()))?;
                Ok(Some(record))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Records `record` under `name`, atomically (write a temporary file, then rename).
    pub(crate) fn write(&self, name: &str, record: &PidRecord) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let path = self.path(name);
        let tmp = path.with_extension("pid.tmp");
        let text = toml::to_string(record).expect("a pid record serialises; this is a bug");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Forgets `name`.
    pub(crate) fn remove(&self, name: &str) -> anyhow::Result<()> {
        match std::fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", self.path(name).display()))
            }
            _ => Ok(()),
        }
    }
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    // A process in the middle of exec can briefly fail the read while /proc/<pid> exists: read
    // again before calling it gone.
    for _ in 0..5 {
        if let Some(fields) = read_stat(pid) {
            return Some(fields);
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn read_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(str::to_string).collect())
}

fn start_ticks(pid: u32) -> Option<u64> {
    start_ticks_of(&stat_fields(pid)?)
}

fn start_ticks_of(fields: &[String]) -> Option<u64> {
    // Fields after the name start at field 3 (state); start time is field 22.
    fields.get(22 - 3)?.parse().ok()
}

fn is_zombie(fields: &[String]) -> bool {
    fields.first().is_some_and(|state| state == "Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_ours_and_a_changed_start_time_is_not() {
        let me = PidRecord::of(std::process::id(), "test".into()).unwrap();
        assert_eq!(me.liveness(), Liveness::Ours);
        let reused = PidRecord { start_ticks: me.start_ticks + 1, ..me.clone() };
        assert_eq!(reused.liveness(), Liveness::Gone);
    }

    #[test]
    fn records_round_trip_and_stop_works() {
        let dir = tempfile::tempdir().unwrap();
        let files = PidFiles::new(dir.path());
        assert_eq!(files.read("sleep").unwrap(), None);
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let record = PidRecord::of(child.id(), "sleep 30".into()).unwrap();
        files.write("sleep", &record).unwrap();
        assert_eq!(files.read("sleep").unwrap(), Some(record.clone()));
        // Reap in the background so the stopped child does not linger as a zombie of this test.
        let reaper = std::thread::spawn(move || child.wait());
        assert!(!record.stop(Duration::from_secs(5)).unwrap(), "sleep should stop on SIGTERM");
        assert_eq!(record.liveness(), Liveness::Gone);
        reaper.join().unwrap().unwrap();
        files.remove("sleep").unwrap();
        assert_eq!(files.read("sleep").unwrap(), None);
    }
}
