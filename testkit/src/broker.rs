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

/// A running broker with memory storage, killed when dropped.
#[derive(Debug)]
pub struct TestBroker {
    child: Child,
    /// A Kafka config pointing at this broker, with the default topic names.
    pub config: KafkaConfig,
    log: tempfile::NamedTempFile,
}

impl TestBroker {
    /// Starts a broker on a free port and waits until it answers metadata requests. Panics with
    /// what to run when tansu is missing or does not start.
    pub async fn start() -> Self {
        let binary = find_tansu(None).unwrap_or_else(|e| panic!("the test kit needs tansu: {e}"));
        let mut last_error = String::new();
        // The free port may be taken between choosing and binding it: try a few.
        for _ in 0..3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
            let log = tempfile::NamedTempFile::new().expect("cannot create a log file");
            let stderr: Stdio = log.reopen().expect("cannot reopen the log file").into();
            let broker = LocalBroker { binary: binary.clone(), addr, storage: Storage::Memory, die_with_parent: true };
            let child = match broker.start(Stdio::null(), stderr, Duration::from_secs(30)).await {
                Ok(child) => child,
                Err(e) => {
                    last_error = format!("{e}; log: {}", std::fs::read_to_string(log.path()).unwrap_or_default());
                    continue;
                }
            };
            let config = KafkaConfig { brokers: addr.to_string(), ..KafkaConfig::default() };
            let broker = Self { child, config, log };
            match admin::wait_until_answering(&broker.config, Duration::from_secs(30)).await {
                Ok(_) => return broker,
                Err(e) => last_error = format!("{e}; log: {}", broker.log_text()),
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
