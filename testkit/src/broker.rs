//! A tansu broker per test.

use std::{
    net::SocketAddr,
    process::{Child, Stdio},
    time::Duration,
};

use adrank_featurestore::{
    KafkaConfig,
    kafka::{
        admin,
        local_broker::{LocalBroker, Storage, find_tansu},
    },
};

/// A running broker, killed when dropped.
#[derive(Debug)]
pub struct TestBroker {
    child: Child,
    /// A Kafka config pointing at this broker, with the default topic names.
    pub config: KafkaConfig,
    log: tempfile::NamedTempFile,
    /// The sqlite database folder of a persistent broker.
    _data: Option<tempfile::TempDir>,
}

impl TestBroker {
    /// Starts a broker with memory storage (fastest) on a free port and waits until it answers
    /// metadata requests. Panics with what to run when tansu is missing or does not start.
    ///
    /// tansu 0.6's memory engine reports wrong high watermarks (far below what it serves); a
    /// test that needs watermarks (consumer lag, "read to the end") uses [`Self::start_persistent`].
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a broker with sqlite storage in a temporary folder: slower, but its watermarks are
    /// exact and it behaves like the broker `adrank up` runs.
    pub async fn start_persistent() -> Self {
        Self::start_with(Some(tempfile::tempdir().expect("cannot create a temporary folder"))).await
    }

    async fn start_with(data: Option<tempfile::TempDir>) -> Self {
        let binary = find_tansu(None).unwrap_or_else(|e| panic!("the test kit needs tansu: {e}"));
        let mut last_error = String::new();
        // The free port may be taken between choosing and binding it: try a few.
        for _ in 0..3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
            let log = tempfile::NamedTempFile::new().expect("cannot create a log file");
            let stderr: Stdio = log.reopen().expect("cannot reopen the log file").into();
            let storage = match &data {
                Some(dir) => Storage::Sqlite(dir.path().join("tansu.db")),
                None => Storage::Memory,
            };
            let broker = LocalBroker { binary: binary.clone(), addr, storage, die_with_parent: true };
            let child = match broker.start(Stdio::null(), stderr, Duration::from_secs(30)).await {
                Ok(child) => child,
                Err(e) => {
                    last_error = format!("{e}; log: {}", std::fs::read_to_string(log.path()).unwrap_or_default());
                    continue;
                }
            };
            let config = KafkaConfig { brokers: addr.to_string(), ..KafkaConfig::default() };
            match admin::wait_until_answering(&config, Duration::from_secs(30)).await {
                Ok(_) => return Self { child, config, log, _data: data },
                Err(e) => {
                    // Dropping it stops the broker that did not answer.
                    let broker = Self { child, config, log, _data: None };
                    last_error = format!("{e}; log: {}", broker.log_text());
                }
            }
        }
        panic!("cannot start a tansu broker: {last_error}");
    }

    /// The broker's output so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
