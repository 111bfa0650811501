//! The machine's Redis, with a key prefix per test.

use std::sync::atomic::{AtomicU32, Ordering};

use adrank_featurestore::{RedisConfig, online};
use redis::Commands as _;

/// The Redis URL tests use: `ADRANK_TEST_REDIS_URL`, else the local default.
pub fn url() -> String {
    std::env::var("ADRANK_TEST_REDIS_URL").unwrap_or_else(|_| RedisConfig::default().url)
}

/// A Redis config whose key prefix belongs to one test; its keys are deleted on drop.
#[derive(Debug)]
pub struct TestRedis {
    /// Points at the test Redis with this test's key prefix.
    pub config: RedisConfig,
}

impl TestRedis {
    /// Checks that Redis answers (panicking with what to run when it does not) and hands out a
    /// fresh prefix.
    pub async fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let key_prefix = format!("adrank-test:{}:{}:", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let config = RedisConfig { url: url(), key_prefix, ..RedisConfig::default() };
        if let Err(e) = online::server_version(&config).await {
            panic!(
                "Redis is not reachable ({e}). Start it with: redis-server --daemonize yes --bind 127.0.0.1 \
                 --port 6379 --save '' --appendonly no (or set ADRANK_TEST_REDIS_URL)"
            );
        }
        Self { config }
    }

    /// Every key under this test's prefix.
    pub fn keys(&self) -> Vec<String> {
        self.try_keys().unwrap_or_else(|e| panic!("cannot list the test's Redis keys: {e}"))
    }

    fn try_keys(&self) -> redis::RedisResult<Vec<String>> {
        let mut connection = redis::Client::open(self.config.url.as_str())?.get_connection()?;
        let pattern = format!("{}*", self.config.key_prefix);
        connection.scan_match::<_, String>(pattern)?.collect()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // Cleanup is best effort: a panic in drop would hide the test's own failure.
        let keys = self.try_keys().unwrap_or_default();
        if keys.is_empty() {
            return;
        }
        if let Ok(mut connection) = redis::Client::open(self.config.url.as_str()).and_then(|c| c.get_connection()) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut connection);
        }
    }
}
