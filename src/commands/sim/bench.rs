//! `adrank sim bench`: the world's throughput on one core.
//!
//! Four stages are timed in one run on the same world: drawing requests (200 candidates
//! each), turning them into the ranking API's JSON bodies, serving the baseline slate into
//! impression and click events, and the same followed by encoding the events as Kafka JSON
//! (what `sim bootstrap` does): the share of that path spent generating says how much faster
//! the world could get before encoding, not the world, limits a publisher.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use adrank_contracts::events::Event as _;
use adrank_loadtest::world::World;
use serde::Serialize;

use super::publish::Publisher;
use crate::{config::Loaded, table::Table};

/// Measure the world's throughput.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Requests per stage.
    #[arg(long, default_value_t = 50_000)]
    requests: u64,
    /// Also publish to the configured Kafka: pre-encoded events (the broker's ceiling) beside
    /// the bootstrap path (generate, encode, publish), on the same broker in the same run.
    #[arg(long)]
    kafka: bool,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Results {
    requests: u64,
    candidates_per_request: u32,
    requests_per_second: f64,
    api_bodies_per_second: f64,
    events: u64,
    events_per_second: f64,
    event_json_per_second: f64,
    target_events_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    kafka: Option<KafkaResults>,
}

#[derive(Debug, Serialize)]
struct KafkaResults {
    events: u64,
    pre_encoded_events_per_second: f64,
    bootstrap_path_events_per_second: f64,
}

/// The target: the world must never be a load test's bottleneck.
const TARGET_EVENTS_PER_SECOND: f64 = 500_000.0;

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let mut world = super::world(loaded);
    let n = args.requests.max(1);

    let start = Instant::now();
    let mut requests = Vec::with_capacity(n as usize);
    for _ in 0..n {
        requests.push(world.next_request());
    }
    let requests_time = start.elapsed();

    let start = Instant::now();
    let mut bytes = 0usize;
    for request in &requests {
        bytes += serde_json::to_vec(&world.rank_request(request))?.len();
    }
    let bodies_time = start.elapsed();
    drop(requests);

    // Events are dropped as they are made, as a publisher would: keeping them all would
    // measure the memory growth of the benchmark, not the world.
    let start = Instant::now();
    let mut events = 0u64;
    for _ in 0..n {
        let served = world.serve_baseline();
        events += (served.impressions.len() + served.clicks.len()) as u64;
    }
    let events_time = start.elapsed();

    let start = Instant::now();
    let mut encoded = 0usize;
    let mut encoded_events = 0u64;
    for _ in 0..n {
        let served = world.serve_baseline();
        encoded += served.impressions.iter().map(|i| i.encode().len()).sum::<usize>();
        encoded += served.clicks.iter().map(|c| c.encode().len()).sum::<usize>();
        encoded_events += (served.impressions.len() + served.clicks.len()) as u64;
    }
    let encode_time = start.elapsed();

    let rate = |count: u64, time: Duration| count as f64 / time.as_secs_f64();
    let results = Results {
        requests: n,
        candidates_per_request: loaded.config.world.candidates,
        requests_per_second: rate(n, requests_time),
        api_bodies_per_second: rate(n, bodies_time),
        events,
        events_per_second: rate(events, events_time),
        event_json_per_second: rate(encoded_events, encode_time),
        target_events_per_second: TARGET_EVENTS_PER_SECOND,
        kafka: if args.kafka { Some(publish(&mut world, loaded, n).await?) } else { None },
    };
    let mut table = Table::new(["STAGE", "RATE", "NOTE"]);
    table.row(vec![
        "draw requests".into(),
        format!("{:.0} requests/s", results.requests_per_second),
        format!("{} candidates each", results.candidates_per_request),
    ]);
    table.row(vec![
        "API JSON bodies".into(),
        format!("{:.0} requests/s", results.api_bodies_per_second),
        format!("{:.1} KiB per body", bytes as f64 / n as f64 / 1024.0),
    ]);
    table.row(vec![
        "serve -> events".into(),
        format!("{:.0} events/s", results.events_per_second),
        format!(
            "{:.2}x the {:.0}k/s target",
            results.events_per_second / TARGET_EVENTS_PER_SECOND,
            TARGET_EVENTS_PER_SECOND / 1e3,
        ),
    ]);
    table.row(vec![
        "serve -> events -> JSON".into(),
        format!("{:.0} events/s", results.event_json_per_second),
        format!(
            "{:.0} bytes per event; generation is {:.0}% of this path",
            encoded as f64 / encoded_events.max(1) as f64,
            100.0 * results.event_json_per_second / results.events_per_second
        ),
    ]);
    if let Some(kafka) = &results.kafka {
        table.row(vec![
            "publish pre-encoded".into(),
            format!("{:.0} events/s", kafka.pre_encoded_events_per_second),
            format!("{} events to {} (acks=all): the broker's ceiling", kafka.events, loaded.config.kafka.brokers),
        ]);
        table.row(vec![
            "generate+encode+publish".into(),
            format!("{:.0} events/s", kafka.bootstrap_path_events_per_second),
            format!("{:.2}x the ceiling", kafka.bootstrap_path_events_per_second / kafka.pre_encoded_events_per_second),
        ]);
    }
    print!("{}", table.render());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Publishes `n / 2` requests' events twice over: once encoded ahead of time, once generated on
/// the way, so the ratio says how close the bootstrap path comes to what the broker takes.
async fn publish(world: &mut World, loaded: &Loaded, n: u64) -> anyhow::Result<KafkaResults> {
    let topics = &loaded.config.kafka.topics;
    let half = (n / 2).max(1);
    let mut messages: Vec<(&str, String, Vec<u8>)> = Vec::new();
    for _ in 0..half {
        let served = world.serve_baseline();
        for i in &served.impressions {
            messages.push((&topics.impressions.name, i.key().to_string(), i.encode()));
        }
        for c in &served.clicks {
            messages.push((&topics.clicks.name, c.key().to_string(), c.encode()));
        }
    }
    let mut publisher = Publisher::new(&loaded.config.kafka)?;
    let start = Instant::now();
    for (topic, key, payload) in &messages {
        publisher.send_raw(topic, key, payload).await?;
    }
    publisher.finish().await?;
    let ceiling = messages.len() as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut events = 0u64;
    for _ in 0..half {
        let served = world.serve_baseline();
        for i in &served.impressions {
            publisher.send(&topics.impressions.name, i).await?;
        }
        for c in &served.clicks {
            publisher.send(&topics.clicks.name, c).await?;
        }
        events += (served.impressions.len() + served.clicks.len()) as u64;
    }
    publisher.finish().await?;
    Ok(KafkaResults {
        events: messages.len() as u64,
        pre_encoded_events_per_second: ceiling,
        bootstrap_path_events_per_second: events as f64 / start.elapsed().as_secs_f64(),
    })
}
