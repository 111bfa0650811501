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

use adrank_featurestore::events::Event as _;
use serde::Serialize;

use crate::{config::Loaded, table::Table};

/// Measure the world's throughput.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Requests per stage.
    #[arg(long, default_value_t = 50_000)]
    requests: u64,
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
}

/// The target: the world must never be a load test's bottleneck.
const TARGET_EVENTS_PER_SECOND: f64 = 500_000.0;

pub(crate) fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
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
        let request = world.next_request();
        let slate = world.rank_by_bid(&request);
        let served = world.serve(&request, &slate, None, ("baseline", "bid"));
        events += (served.impressions.len() + served.clicks.len()) as u64;
    }
    let events_time = start.elapsed();

    let start = Instant::now();
    let mut encoded = 0usize;
    let mut encoded_events = 0u64;
    for _ in 0..n {
        let request = world.next_request();
        let slate = world.rank_by_bid(&request);
        let served = world.serve(&request, &slate, None, ("baseline", "bid"));
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
    print!("{}", table.render());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
