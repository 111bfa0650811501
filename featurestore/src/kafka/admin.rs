//! Topic administration: what the brokers have, and creating the topics adrank needs.

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer as _},
    error::{KafkaError, RDKafkaErrorCode},
};

use crate::{Error, KafkaConfig, Result};

/// What the brokers report about one configured topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    /// The config key (`impressions`, `clicks`, …).
    pub key: &'static str,
    /// The topic name.
    pub name: String,
    /// The partitions the broker has, or `None` when the topic does not exist.
    pub partitions: Option<u32>,
    /// The partitions the config asks for.
    pub wanted_partitions: u32,
}

/// The brokers' view of the cluster and the configured topics.
#[derive(Debug, Clone)]
pub struct ClusterState {
    /// The brokers listed in the metadata, as `host:port`.
    pub brokers: Vec<String>,
    /// Every configured topic.
    pub topics: Vec<TopicState>,
}

impl ClusterState {
    /// The configured topics that the brokers do not have.
    pub fn missing(&self) -> impl Iterator<Item = &TopicState> {
        self.topics.iter().filter(|t| t.partitions.is_none())
    }
}

/// Asks the brokers for their metadata: which brokers and which of the configured topics exist.
/// Fails when no broker answers within the config's request timeout.
pub async fn describe(config: &KafkaConfig) -> Result<ClusterState> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || describe_blocking(&config))
        .await
        .expect("the metadata task does not panic; this is a bug")
}

fn describe_blocking(config: &KafkaConfig) -> Result<ClusterState> {
    let consumer: BaseConsumer =
        super::client_config(config).create().map_err(|source| kafka_error(config, "creating a client", source))?;
    let metadata = consumer
        .fetch_metadata(None, config.request_timeout())
        .map_err(|source| kafka_error(config, "fetching metadata", source))?;
    let brokers = metadata.brokers().iter().map(|b| format!("{}:{}", b.host(), b.port())).collect();
    let topics = config
        .topics
        .all()
        .into_iter()
        .map(|(key, wanted)| TopicState {
            key,
            name: wanted.name.clone(),
            partitions: metadata
                .topics()
                .iter()
                .find(|t| t.name() == wanted.name && t.error().is_none())
                .map(|t| t.partitions().len() as u32),
            wanted_partitions: wanted.partitions.get(),
        })
        .collect();
    Ok(ClusterState { brokers, topics })
}

/// What [`ensure_topics`] did with one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// The topic was created with the configured partitions.
    Created { name: String, partitions: u32 },
    /// The topic was there already; it is left as it is.
    Existed { name: String, partitions: u32 },
}

/// Creates every configured topic that the brokers do not have yet. Existing topics are left
/// alone (even when their partition count differs from the config: repartitioning would move
/// keys between partitions, which is an operator's decision).
pub async fn ensure_topics(config: &KafkaConfig) -> Result<Vec<TopicOutcome>> {
    let state = describe(config).await?;
    let admin: AdminClient<DefaultClientContext> = super::client_config(config)
        .create()
        .map_err(|source| kafka_error(config, "creating an admin client", source))?;
    let missing: Vec<NewTopic<'_>> = state
        .missing()
        .map(|t| NewTopic::new(&t.name, t.wanted_partitions as i32, TopicReplication::Fixed(1)))
        .collect();
    if !missing.is_empty() {
        let options = AdminOptions::new().operation_timeout(Some(config.request_timeout()));
        let results = admin
            .create_topics(&missing, &options)
            .await
            .map_err(|source| kafka_error(config, "creating topics", source))?;
        for result in results {
            match result {
                // Another `up` may have won the race; the topic is there, which is all we want.
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::CreateTopic {
                        brokers: config.brokers.clone(),
                        topic,
                        reason: code.to_string(),
                    });
                }
            }
        }
    }
    Ok(state
        .topics
        .into_iter()
        .map(|t| match t.partitions {
            Some(partitions) => TopicOutcome::Existed { name: t.name, partitions },
            None => TopicOutcome::Created { name: t.name, partitions: t.wanted_partitions },
        })
        .collect())
}

/// Waits until the brokers answer a metadata request, or `within` passes.
pub async fn wait_until_answering(config: &KafkaConfig, within: Duration) -> Result<ClusterState> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match describe(config).await {
            Ok(state) => return Ok(state),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn kafka_error(config: &KafkaConfig, action: &'static str, source: KafkaError) -> Error {
    Error::Kafka { brokers: config.brokers.clone(), action, source }
}
