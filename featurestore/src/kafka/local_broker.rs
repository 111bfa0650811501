//! A local tansu broker: a real Kafka-protocol broker for one machine.
//!
//! `adrank up` starts one with sqlite storage (messages and committed offsets survive a
//! restart); the test kit starts one per test with memory storage on a free port. Both find the
//! executable and build its command line here.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{Error, Result};

/// Where a broker keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In memory: fastest, gone when the process ends. A consumer group joins only after
    /// `session.timeout.ms / 2` on this engine, so tests set a short session timeout.
    Memory,
    /// A sqlite database file: topics, messages and committed offsets survive a restart.
    Sqlite(PathBuf),
}

impl Storage {
    /// The storage URL, and the folder tansu must run in: tansu resolves a sqlite URL against
    /// its working directory (even `sqlite:///abs/path`), so the broker runs in the database's
    /// folder and names only the file.
    fn url_and_dir(&self) -> (String, Option<&Path>) {
        match self {
            Self::Memory => ("memory://tansu/".into(), None),
            Self::Sqlite(path) => {
                let file = path.file_name().map_or_else(|| "tansu.db".into(), |f| f.to_string_lossy().into_owned());
                (format!("sqlite://{file}"), path.parent().filter(|p| !p.as_os_str().is_empty()))
            }
        }
    }
}

/// How to run one local broker.
#[derive(Debug, Clone)]
pub struct LocalBroker {
    /// The tansu executable.
    pub binary: PathBuf,
    /// The address it listens on and advertises to clients.
    pub addr: SocketAddr,
    /// Where it keeps its data.
    pub storage: Storage,
    /// Kill the broker when the thread that started it exits (Linux's parent-death signal,
    /// set through util-linux `setpriv`), so that a test process killed mid-run leaves no
    /// broker behind. `adrank up` leaves it off: its broker outlives the command.
    pub die_with_parent: bool,
}

impl LocalBroker {
    /// The command line that runs this broker. Tansu's own environment variables are cleared so
    /// that a stray `STORAGE_ENGINE` in the caller's shell cannot redirect it.
    pub fn command(&self) -> Command {
        let listener = format!("tcp://{}", self.addr);
        let (storage, dir) = self.storage.url_and_dir();
        let mut command = if self.die_with_parent {
            let mut setpriv = Command::new("setpriv");
            setpriv.args(["--pdeathsig", "KILL", "--"]).arg(&self.binary);
            setpriv
        } else {
            Command::new(&self.binary)
        };
        command
            .arg("broker")
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", &storage])
            .arg("--silent")
            .stdin(Stdio::null());
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        for var in ["CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY"] {
            command.env_remove(var);
        }
        command
    }

    /// Starts the broker in its own process group (a Ctrl-C aimed at the caller leaves it
    /// running) with its output going to `stdout` and `stderr`, and waits until it accepts
    /// connections. The caller owns the returned child.
    pub async fn start(&self, stdout: Stdio, stderr: Stdio, within: Duration) -> Result<Child> {
        if let Storage::Sqlite(path) = &self.storage
            && let Some(dir) = path.parent()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| self.start_error(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut command = self.command();
        command.stdout(stdout).stderr(stderr);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child =
            command.spawn().map_err(|e| self.start_error(format!("cannot run {}: {e}", self.binary.display())))?;
        match wait_until_listening(self.addr, within, &mut child).await {
            Ok(()) => Ok(child),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    fn start_error(&self, reason: String) -> Error {
        Error::BrokerStart { addr: self.addr, reason }
    }
}

/// Waits until something accepts TCP connections on `addr`, failing early if `child` exits.
async fn wait_until_listening(addr: SocketAddr, within: Duration, child: &mut Child) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::BrokerStart { addr, reason: format!("the broker exited at start ({status})") });
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::BrokerStart { addr, reason: format!("not listening after {within:?}") });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// adrank's cache folder for tools built once per machine: `$ADRANK_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/adrank`, else `~/.cache/adrank`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ADRANK_CACHE_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("adrank");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("adrank")
}

/// Finds the tansu executable: the configured path, then the copy the setup script builds in
/// the cache folder, then `tansu` on `PATH`.
pub fn find_tansu(configured: Option<&Path>) -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(path) = configured {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        // A configured path that is wrong is an error even if another copy exists elsewhere.
        return Err(Error::TansuNotFound { tried: vec![path.to_path_buf()] });
    }
    let cached = cache_dir().join("tansu-0.6.0").join("bin").join("tansu");
    if cached.is_file() {
        return Ok(cached);
    }
    tried.push(cached);
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let candidate = dir.join("tansu");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    tried.push("tansu on PATH".into());
    Err(Error::TansuNotFound { tried })
}
