//! What a benchmark runs against: a tansu broker of its own (memory storage, so the broker's
//! disk is not what is measured) and the configured Redis under a prefix of its own.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Stdio},
    time::Duration,
};

use adrank_featurestore::{
    KafkaConfig, RedisConfig,
    kafka::{
        admin,
        local_broker::{LocalBroker, Storage, find_tansu},
    },
    online,
};
use anyhow::Context as _;

/// A memory-storage tansu broker on a free loopback port, stopped on drop.
pub(super) struct BenchBroker {
    child: Child,
    pub(super) kafka: KafkaConfig,
}

impl BenchBroker {
    pub(super) async fn start(base: &KafkaConfig, tansu: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let binary = find_tansu(tansu)?;
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).context("no free port")?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let broker = LocalBroker { binary, addr, storage: Storage::Memory, die_with_parent: true };
        let child = broker.start(Stdio::null(), Stdio::null(), Duration::from_secs(30)).await?;
        let kafka = KafkaConfig {
            brokers: addr.to_string(),
            consumer_group: format!("adrank-bench-{}", std::process::id()),
            ..base.clone()
        };
        let broker = Self { child, kafka };
        admin::wait_until_answering(&broker.kafka, Duration::from_secs(30)).await?;
        admin::ensure_topics(&broker.kafka).await?;
        Ok(broker)
    }
}

impl BenchBroker {
    /// The broker's process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BenchBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configured Redis under a prefix of the benchmark's own, emptied on drop.
pub(super) struct BenchRedis {
    pub(super) config: RedisConfig,
}

impl BenchRedis {
    pub(super) async fn new(base: &RedisConfig) -> anyhow::Result<Self> {
        let config = RedisConfig {
            key_prefix: format!("adrank-bench:{}:", std::process::id()),
            cache_ttl_ms: 0,
            ..base.clone()
        };
        online::server_version(&config).await.context("Redis is not reachable: run `adrank up`")?;
        Ok(Self { config })
    }

    /// The Redis server's process id, when it runs on this machine (its `/proc` entry exists).
    pub(super) async fn local_pid(&self) -> anyhow::Result<Option<u32>> {
        let mut connection = online::connect(&self.config).await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut connection).await?;
        let pid = info.lines().find_map(|l| l.strip_prefix("process_id:")).and_then(|p| p.trim().parse::<u32>().ok());
        Ok(pid.filter(|pid| std::path::Path::new(&format!("/proc/{pid}/stat")).exists()))
    }

    /// Deletes every key under the prefix.
    pub(super) fn clear(&self) -> anyhow::Result<()> {
        let mut connection = redis::Client::open(self.config.url.as_str())?.get_connection()?;
        let keys: Vec<String> =
            redis::Commands::scan_match::<_, String>(&mut connection, format!("{}*", self.config.key_prefix))?
                .collect::<Result<_, _>>()?;
        for chunk in keys.chunks(10_000) {
            redis::cmd("UNLINK").arg(chunk).query::<()>(&mut connection)?;
        }
        Ok(())
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.clear();
    }
}
