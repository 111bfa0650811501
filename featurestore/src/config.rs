//! The `[kafka]` and `[redis]` config sections.
//!
//! Each section checks its own values ([`KafkaConfig::problems`]) so that the command line can
//! report every problem in a config file at once instead of stopping at the first.

use std::{net::SocketAddr, num::NonZeroU32, time::Duration};

use adrank_contracts::ConfigProblem;
use redis::IntoConnectionInfo as _;
use serde::{Deserialize, Serialize};

/// Where the Kafka brokers are and which topics adrank reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` separated by commas. `adrank up` starts a local tansu
    /// broker on the first one when nothing answers there and it is a loopback address.
    pub brokers: String,
    /// The client id adrank's producers and consumers present to the brokers (shows up in broker
    /// logs and quotas).
    pub client_id: String,
    /// The consumer group of the feature-store ingesters. Every ingester in one group shares the
    /// partitions; a second group would consume everything again.
    pub consumer_group: String,
    /// How long an admin or metadata request may take before it counts as failed, in
    /// milliseconds. Short values make `doctor` snappy; long ones tolerate a loaded broker.
    pub request_timeout_ms: u64,
    /// The topics adrank uses, with the partition count `adrank up` creates them with.
    pub topics: Topics,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "adrank".into(),
            consumer_group: "adrank-ingest".into(),
            request_timeout_ms: 5_000,
            topics: Topics::default(),
        }
    }
}

/// The topics adrank uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Served impressions, keyed by impression id.
    pub impressions: TopicConfig,
    /// Clicks, keyed by the impression id they belong to, so that an impression and its clicks
    /// land in the same partition (the ingester joins them).
    pub clicks: TopicConfig,
    /// User-profile records.
    pub users: TopicConfig,
    /// Ad-catalog records.
    pub ads: TopicConfig,
    /// Events the ingester could not decode, with the reason.
    pub dead_letter: TopicConfig,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            impressions: TopicConfig::new("adrank-impressions", 8),
            clicks: TopicConfig::new("adrank-clicks", 8),
            users: TopicConfig::new("adrank-users", 4),
            ads: TopicConfig::new("adrank-ads", 4),
            dead_letter: TopicConfig::new("adrank-dead-letter", 1),
        }
    }
}

impl Topics {
    /// Every topic with its config key.
    pub fn all(&self) -> [(&'static str, &TopicConfig); 5] {
        [
            ("impressions", &self.impressions),
            ("clicks", &self.clicks),
            ("users", &self.users),
            ("ads", &self.ads),
            ("dead_letter", &self.dead_letter),
        ]
    }
}

/// One topic: its name and how many partitions it is created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// The topic name (letters, digits, `.`, `_`, `-`; at most 249 characters).
    pub name: String,
    /// Partitions: the most ingesters that can share the topic's load.
    pub partitions: NonZeroU32,
}

impl TopicConfig {
    fn new(name: &str, partitions: u32) -> Self {
        Self {
            name: name.into(),
            partitions: NonZeroU32::new(partitions).expect("default partition counts are positive"),
        }
    }
}

impl KafkaConfig {
    /// The bootstrap brokers as a list.
    pub fn broker_list(&self) -> Vec<&str> {
        self.brokers.split(',').map(str::trim).filter(|b| !b.is_empty()).collect()
    }

    /// The first broker as a socket address, when it is written as `ip:port` or
    /// `localhost:port`.
    pub fn first_broker_addr(&self) -> Option<SocketAddr> {
        let first = self.broker_list().first().copied()?;
        if let Some(port) = first.strip_prefix("localhost:") {
            return Some(SocketAddr::from(([127, 0, 0, 1], port.parse().ok()?)));
        }
        first.parse().ok()
    }

    /// The admin and metadata request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Every problem in this section; empty when it is usable.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let brokers = self.broker_list();
        if brokers.is_empty() {
            problems.push(ConfigProblem::new("brokers", "is empty; expected host:port[,host:port…]"));
        }
        for broker in brokers {
            if let Err(why) = check_host_port(broker) {
                problems.push(ConfigProblem::new(
                    "brokers",
                    format!("`{broker}` {why}; expected host:port, for example 127.0.0.1:9092"),
                ));
            }
        }
        for (key, value) in [("client_id", &self.client_id), ("consumer_group", &self.consumer_group)] {
            if value.trim().is_empty() {
                problems.push(ConfigProblem::new(key, "is empty; expected a name"));
            }
        }
        if self.request_timeout_ms == 0 {
            problems.push(ConfigProblem::new("request_timeout_ms", "is 0; expected at least 1"));
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (key, topic) in self.topics.all() {
            if let Err(why) = check_topic_name(&topic.name) {
                problems.push(ConfigProblem::new(format!("topics.{key}.name"), why));
            }
            if let Some((other, _)) = seen.iter().find(|(_, name)| *name == topic.name) {
                problems.push(ConfigProblem::new(
                    format!("topics.{key}.name"),
                    format!("`{}` is also the name of topics.{other}; each topic needs its own", topic.name),
                ));
            }
            seen.push((key, &topic.name));
        }
        if self.topics.impressions.partitions != self.topics.clicks.partitions {
            problems.push(ConfigProblem::new(
                "topics.clicks.partitions",
                format!(
                    "is {} but topics.impressions.partitions is {}; they must be equal so that a \
                     click lands in the same partition as its impression",
                    self.topics.clicks.partitions, self.topics.impressions.partitions
                ),
            ));
        }
        problems
    }
}

fn check_host_port(broker: &str) -> Result<(), &'static str> {
    let (host, port) = broker.rsplit_once(':').ok_or("has no port")?;
    if host.is_empty() {
        return Err("has no host");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("has no valid port (1-65535)"),
        Ok(_) => Ok(()),
    }
}

fn check_topic_name(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 249 || name == "." || name == ".." {
        return Err(format!("`{name}` is not a topic name; expected 1 to 249 characters"));
    }
    if let Some(bad) = name.chars().find(|c| !valid(*c)) {
        return Err(format!("`{name}` contains `{bad}`; topic names allow only letters, digits, `.`, `_` and `-`"));
    }
    Ok(())
}

/// Where the Redis online store is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// The Redis URL: `redis://[user:password@]host:port/db`, `rediss://` for TLS, or
    /// `unix:///path/to/socket`. `adrank up` starts a local `redis-server` on a loopback
    /// address when nothing answers there.
    pub url: String,
    /// Prefix of every key adrank writes, so that several deployments (or tests) can share one
    /// Redis without seeing each other's keys.
    pub key_prefix: String,
    /// How long connecting may take before Redis counts as down, in milliseconds. Serving falls
    /// back to default features when Redis is slow, so keep this short.
    pub connect_timeout_ms: u64,
    /// An entity (user, ad, advertiser) that no event has touched for this long, in event
    /// time, reads as missing: its features fall back to the spec's defaults instead of showing
    /// stale values, and Redis deletes its hash (the same span in wall-clock time after its
    /// last write). Keep it longer than the longest counter window (7 days).
    pub entity_ttl_secs: u64,
    /// How long serving may reuse ad and advertiser hashes it read, in milliseconds (0: no
    /// cache). Ads and advertisers repeat across requests; a short reuse saves most of the read
    /// while counters stay fresh to within this span. Users are always read.
    pub cache_ttl_ms: u64,
    /// The most ad and advertiser hashes the cache holds.
    pub cache_entries: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "adrank:".into(),
            connect_timeout_ms: 1_000,
            entity_ttl_secs: 8 * 24 * 3600,
            cache_ttl_ms: 1_000,
            cache_entries: 200_000,
        }
    }
}

impl RedisConfig {
    /// Every problem in this section; empty when it is usable.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.url.as_str().into_connection_info().is_err() {
            problems.push(ConfigProblem::new(
                "url",
                format!(
                    "`{}` is not a Redis URL; expected redis://host:port/db, rediss://host:port/db or unix:///path",
                    self.url
                ),
            ));
        }
        if self.connect_timeout_ms == 0 {
            problems.push(ConfigProblem::new("connect_timeout_ms", "is 0; expected at least 1"));
        }
        if self.entity_ttl_secs < 7 * 24 * 3600 {
            problems.push(ConfigProblem::new(
                "entity_ttl_secs",
                format!(
                    "is {}; expected at least 604800 (7 days), or entities would expire inside the 7-day counter window",
                    self.entity_ttl_secs
                ),
            ));
        }
        problems
    }

    /// The entity TTL in milliseconds.
    pub fn entity_ttl_ms(&self) -> i64 {
        i64::try_from(self.entity_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The `host:port` of a TCP Redis URL, when the URL names one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        let url = redis::parse_redis_url(&self.url)?;
        let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']');
        let ip = host.parse().ok().or_else(|| (host == "localhost").then(|| [127, 0, 0, 1].into()))?;
        Some(SocketAddr::new(ip, url.port().unwrap_or(6379)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_have_no_problems() {
        assert_eq!(KafkaConfig::default().problems(), vec![]);
        assert_eq!(RedisConfig::default().problems(), vec![]);
    }

    #[test]
    fn every_kafka_problem_is_reported() {
        let mut config = KafkaConfig { brokers: "localhost,:9092,host:99999".into(), ..Default::default() };
        config.topics.clicks.partitions = NonZeroU32::new(3).unwrap();
        config.topics.ads.name = "bad topic".into();
        config.topics.users.name = config.topics.impressions.name.clone();
        let keys: Vec<String> = config.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            ["brokers", "brokers", "brokers", "topics.users.name", "topics.ads.name", "topics.clicks.partitions"]
        );
    }

    #[test]
    fn first_broker_address() {
        let config = |brokers: &str| KafkaConfig { brokers: brokers.into(), ..Default::default() };
        assert_eq!(config("localhost:9093,b:1").first_broker_addr(), Some("127.0.0.1:9093".parse().unwrap()));
        assert_eq!(config("10.0.0.1:9092").first_broker_addr(), Some("10.0.0.1:9092".parse().unwrap()));
        assert_eq!(config("kafka.internal:9092").first_broker_addr(), None);
    }

    #[test]
    fn bad_redis_url_is_named() {
        let config = RedisConfig { url: "http://example".into(), ..Default::default() };
        let problems = config.problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "url");
        assert!(problems[0].problem.contains("http://example"), "{}", problems[0].problem);
    }

    #[test]
    fn redis_tcp_addr() {
        assert_eq!(RedisConfig::default().tcp_addr(), Some("127.0.0.1:6379".parse().unwrap()));
        let config = RedisConfig { url: "redis://localhost:7000/2".into(), ..Default::default() };
        assert_eq!(config.tcp_addr(), Some("127.0.0.1:7000".parse().unwrap()));
        let config = RedisConfig { url: "unix:///tmp/redis.sock".into(), ..Default::default() };
        assert_eq!(config.tcp_addr(), None);
    }
}
