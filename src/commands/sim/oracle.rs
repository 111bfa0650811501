//! `adrank sim oracle`: what the truth itself achieves on a set of events.

use std::{
    io::BufRead as _,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use adrank_contracts::events::{Click, Event as _, Impression};
use adrank_featurestore::{KafkaConfig, kafka};
use adrank_loadtest::oracle::oracle_quality;
use anyhow::{Context as _, bail};
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
};

use crate::{config::Loaded, table::Table};

/// Oracle metrics for impressions and clicks.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Read JSON lines of impressions and clicks from this file instead of Kafka.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Only events at or after this time (milliseconds since the Unix epoch).
    #[arg(long)]
    since_ms: Option<i64>,
    /// Only events before this time.
    #[arg(long)]
    until_ms: Option<i64>,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let (mut impressions, mut clicks) = match &args.file {
        Some(path) => read_file(path)?,
        None => {
            let config = loaded.config.kafka.clone();
            tokio::task::spawn_blocking(move || read_kafka(&config)).await??
        }
    };
    let window = |t: i64| args.since_ms.is_none_or(|s| t >= s) && args.until_ms.is_none_or(|u| t < u);
    impressions.retain(|i| window(i.event_time_ms));
    clicks.retain(|c| window(c.event_time_ms));
    let q = oracle_quality(&impressions, &clicks)?;
    let mut table = Table::new(["METRIC", "ORACLE"]);
    table.row(vec!["impressions".into(), q.examples.to_string()]);
    table.row(vec!["CTR".into(), format!("{:.5}", q.ctr)]);
    table.row(vec!["mean oracle_p".into(), format!("{:.5}", q.mean_prediction)]);
    table.row(vec!["log loss".into(), format!("{:.6}", q.log_loss)]);
    table.row(vec!["AUC".into(), format!("{:.6}", q.auc)]);
    table.row(vec!["normalised entropy".into(), format!("{:.6}", q.normalised_entropy)]);
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

/// One event per line: impressions and clicks in any order. A line that is neither is an error
/// naming the line.
fn read_file(path: &PathBuf) -> anyhow::Result<(Vec<Impression>, Vec<Click>)> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (mut impressions, mut clicks) = (Vec::new(), Vec::new());
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match Impression::decode(line.as_bytes()) {
            Ok(impression) => impressions.push(impression),
            Err(as_impression) => match Click::decode(line.as_bytes()) {
                Ok(click) => clicks.push(click),
                Err(as_click) => bail!(
                    "{}:{}: neither an impression ({as_impression}) nor a click ({as_click})",
                    path.display(),
                    number + 1
                ),
            },
        }
    }
    Ok((impressions, clicks))
}

/// How long the topics must stay quiet before reading stops.
const QUIET: Duration = Duration::from_secs(2);

/// Reads the impression and click topics from the beginning to their current end.
fn read_kafka(config: &KafkaConfig) -> anyhow::Result<(Vec<Impression>, Vec<Click>)> {
    let consumer: BaseConsumer = kafka::client_config(config)
        .set("group.id", "adrank-sim-oracle")
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a Kafka consumer")?;
    let topics = [&config.topics.impressions, &config.topics.clicks];
    let mut assignment = TopicPartitionList::new();
    // Per partition, the offset reading must reach: the end as it is now. Offsets may have
    // gaps, so a partition is done when a message at or past its last offset arrives.
    let mut pending: Vec<(String, i32, i64)> = Vec::new();
    for topic in topics {
        for partition in 0..topic.partitions.get() as i32 {
            let (low, high) = consumer
                .fetch_watermarks(&topic.name, partition, config.request_timeout())
                .with_context(|| format!("cannot read the offsets of {} (run `adrank up`?)", topic.name))?;
            assignment.add_partition_offset(&topic.name, partition, Offset::Offset(low))?;
            if high > low {
                pending.push((topic.name.clone(), partition, high - 1));
            }
        }
    }
    consumer.assign(&assignment)?;
    drop(assignment);
    let (mut impressions, mut clicks) = (Vec::new(), Vec::new());
    let mut idle = Instant::now();
    // Past the watermarks, read on until the topics go quiet: tansu 0.6's memory engine reports
    // high watermarks that lag far behind what it serves (measured: 1 for a partition holding
    // 2,453 messages), so they are only a lower bound.
    while !pending.is_empty() || idle.elapsed() < QUIET {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            if idle.elapsed() > Duration::from_secs(30) {
                bail!("no message for 30 s with {} partitions short of their end", pending.len());
            }
            continue;
        };
        idle = Instant::now();
        let message = message.context("cannot read from Kafka")?;
        if let Some(at) = pending.iter().position(|(t, p, _)| t == message.topic() && *p == message.partition())
            && message.offset() >= pending[at].2
        {
            pending.swap_remove(at);
        }
        let payload = message.payload().unwrap_or_default();
        let located = || format!("{} partition {} offset {}", message.topic(), message.partition(), message.offset());
        if message.topic() == config.topics.impressions.name {
            impressions.push(Impression::decode(payload).with_context(located)?);
        } else {
            clicks.push(Click::decode(payload).with_context(located)?);
        }
    }
    Ok((impressions, clicks))
}
