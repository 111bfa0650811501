//! `adrank bench ingest`: the feature store beside its limits, in one run on one machine.
//!
//! 1. The world's history (profiles, catalog, impressions, clicks) is published to a memory
//!    tansu broker.
//! 2. Raw consume: a bare librdkafka consumer, fetching as the ingester does, reads it all (the
//!    broker's limit for that consumer).
//! 3. Raw writes: pipelined `HINCRBY`s to the same Redis, one per event (Redis's limit).
//! 4. Ingest: the real ingester reads it all into Redis and the Parquet log; the CPU per event
//!    of the ingester, the broker and Redis (from /proc) says what the rate would cost.
//! 5. Reads: online reads of one user and the request's candidates, beside a naive loop with
//!    one round trip per entity, and with the ad cache.
//! 6. Freshness: events stamped with the wall clock are produced at half the ingest rate (or at
//!    `--freshness-rate`) while an ingester runs; each event's delay until Redis's watermark covers it is measured from
//!    outside the ingester. Meanwhile a read every 5 ms shows what serving's reads get while
//!    the ingester's scripts hold Redis.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use adrank_contracts::{events::Event, spec::FeatureSpec};
use adrank_featurestore::{
    IngestConfig, KafkaConfig, RedisConfig,
    ingest::{Ingester, RunOptions},
    kafka,
    online::{self, Wanted},
};
use adrank_loadtest::{generator::cpu_seconds, world::World};
use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde::Serialize;

use super::{
    reads::{self, Percentiles},
    stack::{BenchBroker, BenchRedis},
};
use crate::{commands::sim::publish::Publisher, config::Loaded, table::Table};

/// Measure the feature store beside its limits.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Events of history to ingest (at least 10,000).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Online reads to time (the naive loop times a tenth as many, at most 1,000).
    #[arg(long, default_value_t = 10_000)]
    reads: usize,
    /// Seconds of paced traffic for the freshness measurement.
    #[arg(long, default_value_t = 10)]
    freshness_secs: u64,
    /// Events per second of the paced traffic instead of half the measured ingest rate: to
    /// compare builds at one load on a machine whose speed drifts.
    #[arg(long, value_name = "EVENTS_PER_SECOND")]
    freshness_rate: Option<f64>,
    /// The feature spec whose user, ad and advertiser attributes the targeted reads fetch.
    /// Default: `features.toml` beside the config file, else `config/features.toml`.
    #[arg(long, value_name = "PATH")]
    spec: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Results {
    events: u64,
    raw_consume_events_per_second: f64,
    /// The raw consumer's (and the ingester's) `fetch.wait.max.ms`, which bounds what tansu
    /// serves.
    raw_consume_fetch_wait_ms: u64,
    raw_redis_writes_per_second: f64,
    ingest_events_per_second: f64,
    /// CPU per event of each process while the ingester ran (Redis's only when it runs here).
    ingest_cpu: CpuPerEvent,
    ingest_over_slower_limit: f64,
    target_events_per_second: f64,
    reads: reads::Results,
    freshness_rate_events_per_second: f64,
    freshness_events: usize,
    freshness_seconds: Percentiles,
    /// Uncached reads (spec's attributes) made during the freshness phase, one every 5 ms.
    reads_while_ingesting: usize,
    reads_while_ingesting_seconds: Percentiles,
    /// The ingester's records per script call (`ingest.max_apply_records`): how long one call
    /// holds Redis, and so how long a read can wait behind it.
    max_apply_records: usize,
}

const TARGET_EVENTS_PER_SECOND: f64 = 100_000.0;

/// What one ingested event costs each process on this machine, in CPU microseconds, and the
/// cores the three together would need at the 100k/s target.
#[derive(Debug, Default, Serialize)]
struct CpuPerEvent {
    /// This process: the ingester (and the benchmark's 5 ms watermark poll).
    ingester_us: f64,
    broker_us: f64,
    /// All of Redis's work over the span: the poll's too, and any other client's.
    redis_us: Option<f64>,
    cores_at_target: Option<f64>,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    if args.events < 10_000 {
        bail!("--events is {}; expected at least 10000", args.events);
    }
    if let Some(rate) = args.freshness_rate.filter(|r| !(r.is_finite() && *r >= 1.0)) {
        bail!("--freshness-rate is {rate}; expected at least 1 event per second");
    }
    let config = &loaded.config;
    let spec = FeatureSpec::load(&loaded.spec_path(args.spec.as_deref()))?;
    let tansu = (!config.stack.tansu_binary.is_empty()).then(|| std::path::Path::new(&config.stack.tansu_binary));
    let broker =
        BenchBroker::start(&config.kafka, tansu).await.context("cannot start a tansu broker for the benchmark")?;
    let redis = BenchRedis::new(&config.redis).await?;
    let log_dir = tempfile::tempdir().context("cannot create a folder for the training log")?;

    eprintln!("building the world and {} events of history …", args.events);
    let mut world = World::new(config.world.clone());
    let history = history(&mut world, &broker.kafka, args.events);
    let total = history.len() as u64;
    let mut publisher = Publisher::new(&broker.kafka)?;
    for (topic, key, payload) in &history {
        publisher.send_raw(topic, key, payload).await?;
    }
    publisher.finish().await?;
    drop(history);

    eprintln!("raw consume …");
    let raw_consume = raw_consume(&broker.kafka, &config.ingest, total).await?;
    eprintln!("raw Redis writes …");
    let raw_redis = raw_redis_writes(&redis.config, total.min(1_000_000)).await?;
    redis.clear()?;

    eprintln!("ingesting …");
    let ingest_config = IngestConfig { training_log: log_dir.path().display().to_string(), ..config.ingest.clone() };
    let pids = [Some(std::process::id()), Some(broker.pid()), redis.local_pid().await?];
    let (ingest, ingest_cpu) = ingest_rate(&broker.kafka, &redis.config, &ingest_config, total, pids).await?;
    let slower = raw_consume.min(raw_redis);

    eprintln!("online reads …");
    let reads =
        reads::measure(&redis.config, &mut world, args.reads, Wanted::from_spec(&spec), [pids[0], pids[2]]).await?;

    let rate = args.freshness_rate.unwrap_or(ingest / 2.0);
    eprintln!("freshness at {rate:.0} events/s …");
    let read = (RedisConfig { cache_ttl_ms: 0, ..redis.config.clone() }, Wanted::from_spec(&spec));
    let freshness =
        reads::freshness(&broker.kafka, &redis.config, &ingest_config, &mut world, read, rate, args.freshness_secs)
            .await?;

    let results = Results {
        events: total,
        raw_consume_events_per_second: raw_consume,
        raw_consume_fetch_wait_ms: config.ingest.fetch_wait_ms(),
        raw_redis_writes_per_second: raw_redis,
        ingest_events_per_second: ingest,
        ingest_cpu,
        ingest_over_slower_limit: ingest / slower,
        target_events_per_second: TARGET_EVENTS_PER_SECOND,
        reads,
        freshness_rate_events_per_second: rate,
        freshness_events: freshness.events,
        freshness_seconds: freshness.seconds,
        reads_while_ingesting: freshness.reads,
        reads_while_ingesting_seconds: freshness.read_seconds,
        max_apply_records: ingest_config.max_apply_records,
    };
    print!("{}", render(&results));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn render(r: &Results) -> String {
    let mut table = Table::new(["measure", "value", "beside"]);
    let per_s = |x: f64| format!("{:.0}/s", x);
    table.row(vec![
        format!("raw consume (memory tansu, {} ms fetch wait)", r.raw_consume_fetch_wait_ms),
        per_s(r.raw_consume_events_per_second),
        String::new(),
    ]);
    table.row(vec!["raw pipelined HINCRBY".into(), per_s(r.raw_redis_writes_per_second), String::new()]);
    table.row(vec![
        "ingest, Kafka -> Redis + Parquet".into(),
        per_s(r.ingest_events_per_second),
        format!(
            "{:.2}x the slower limit (target 0.5x), {:.2}x the 100k/s target",
            r.ingest_over_slower_limit,
            r.ingest_events_per_second / r.target_events_per_second
        ),
    ]);
    let c = &r.ingest_cpu;
    table.row(vec![
        "  CPU per event: ingester / broker / Redis".into(),
        format!(
            "{:.1} / {:.1} / {} us",
            c.ingester_us,
            c.broker_us,
            c.redis_us.map_or("(not local)".into(), |us| format!("{us:.1}"))
        ),
        c.cores_at_target.map_or(String::new(), |cores| format!("{cores:.2} cores at 100k/s (this machine has 2)")),
    ]);
    let ms = |p: &Percentiles| format!("p50 {:.3} ms, p99 {:.3} ms", p.p50 * 1e3, p.p99 * 1e3);
    let reads = &r.reads;
    table.row(vec![
        format!("read 1 user + {} ads, one round trip, spec's attributes", reads.ads_per_read),
        ms(&reads.pipelined_seconds),
        format!("{} reads; target p99 <= 1 ms", reads.reads),
    ]);
    let c = &reads.pipelined_cpu;
    let us = |us: Option<f64>| us.map_or("(not local)".into(), |us| format!("{us:.0}"));
    table.row(vec![
        "  CPU per read: client / Redis".into(),
        format!("{} / {} us", us(c.client_us), us(c.redis_us)),
        String::new(),
    ]);
    table.row(vec!["  the same, every attribute kept".into(), ms(&reads.all_attributes_seconds), String::new()]);
    table.row(vec!["  the same, ad cache on".into(), ms(&reads.cached_seconds), String::new()]);
    table.row(vec![
        "  naive: one round trip per entity".into(),
        ms(&reads.naive_seconds),
        format!(
            "{} reads; pipelined p99 is {:.1}x faster",
            reads.naive_reads,
            reads.naive_seconds.p99 / reads.pipelined_seconds.p99
        ),
    ]);
    table.row(vec![
        format!("freshness at {:.0} events/s", r.freshness_rate_events_per_second),
        format!("p50 {:.3} s, p99 {:.3} s", r.freshness_seconds.p50, r.freshness_seconds.p99),
        format!("{} events; target p99 < 1 s", r.freshness_events),
    ]);
    let read = &r.reads_while_ingesting_seconds;
    table.row(vec![
        "  read meanwhile, spec's attributes".into(),
        format!("p50 {:.3} ms, p99 {:.3} ms", read.p50 * 1e3, read.p99 * 1e3),
        format!(
            "{} reads, one per {} ms; max {:.1} ms; idle p99 {:.3} ms; target p99 <= 2 ms \
             ({} records per script call)",
            r.reads_while_ingesting,
            reads::READ_EVERY.as_millis(),
            read.max * 1e3,
            r.reads.pipelined_seconds.p99 * 1e3,
            r.max_apply_records
        ),
    ]);
    table.render()
}

/// The world's history as (topic, key, payload), at least `events` long.
fn history(world: &mut World, kafka: &KafkaConfig, events: u64) -> Vec<(String, String, Vec<u8>)> {
    fn entry(topic: &str, event: &impl Event) -> (String, String, Vec<u8>) {
        (topic.to_string(), event.key().to_string(), event.encode())
    }
    let topics = &kafka.topics;
    let mut out: Vec<_> = world.user_profiles().map(|profile| entry(&topics.users.name, &profile)).collect();
    out.extend(world.live_catalog().iter().map(|record| entry(&topics.ads.name, record)));
    while (out.len() as u64) < events {
        let served = world.serve_baseline();
        out.extend(served.impressions.iter().map(|impression| entry(&topics.impressions.name, impression)));
        out.extend(served.clicks.iter().map(|click| entry(&topics.clicks.name, click)));
        out.extend(world.take_catalog_changes().iter().map(|record| entry(&topics.ads.name, record)));
    }
    out
}

/// A bare consumer reads `total` messages; events per second from the first message on (the
/// group join is not timed). It fetches as the ingester does: tansu holds each fetch for the
/// consumer's fetch wait, so with librdkafka's default wait (500 ms) this read a tenth of what
/// the ingester's wait (50 ms) lets through, and passed that off as the broker's limit.
async fn raw_consume(kafka: &KafkaConfig, ingest: &IngestConfig, total: u64) -> anyhow::Result<f64> {
    let config = kafka.clone();
    let fetch_wait_ms = ingest.fetch_wait_ms();
    tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let consumer: BaseConsumer = kafka::client_config(&config)
            .set("group.id", format!("{}-raw", config.consumer_group))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
            .create()?;
        let topics = &config.topics;
        consumer.subscribe(&[&topics.impressions.name, &topics.clicks.name, &topics.users.name, &topics.ads.name])?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let (mut read, mut first) = (0u64, None);
        while read < total {
            if Instant::now() > deadline {
                bail!("the raw consumer read only {read} of {total} messages in 10 minutes");
            }
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                message?;
                first.get_or_insert_with(Instant::now);
                read += 1;
            }
        }
        let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
        Ok((read - 1) as f64 / elapsed.as_secs_f64())
    })
    .await?
}

/// `writes` pipelined `HINCRBY`s in rounds of 5,000 over 100k keys, one round trip at a time
/// on one connection: what the ingester's round trips could do at best.
async fn raw_redis_writes(redis: &RedisConfig, writes: u64) -> anyhow::Result<f64> {
    let mut connection = online::connect(redis).await?;
    let started = Instant::now();
    let mut done = 0u64;
    while done < writes {
        let mut pipe = redis::pipe();
        for i in done..(done + 5_000).min(writes) {
            pipe.cmd("HINCRBY").arg(format!("{}raw:{}", redis.key_prefix, i % 100_000)).arg("n").arg(1).ignore();
        }
        pipe.query_async::<()>(&mut connection).await?;
        done = (done + 5_000).min(writes);
    }
    Ok(writes as f64 / started.elapsed().as_secs_f64())
}

/// The real ingester over everything published; events per second from the first applied
/// round to the last (the group join is not timed), and the CPU per event of the processes in
/// `pids` (this one, the broker, Redis) over the same span.
async fn ingest_rate(
    kafka: &KafkaConfig,
    redis: &RedisConfig,
    ingest: &IngestConfig,
    total: u64,
    pids: [Option<u32>; 3],
) -> anyhow::Result<(f64, CpuPerEvent)> {
    let cpu = || pids.map(|pid| pid.and_then(|pid| cpu_seconds(&format!("/proc/{pid}/stat"))));
    let ingester = Ingester::new(kafka, redis, ingest).await?;
    let run =
        tokio::spawn(ingester.run(RunOptions { exit_when_idle: Some(Duration::from_secs(2)) }, std::future::pending()));
    let mut connection = online::connect(redis).await?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first: Option<(Instant, i64, [Option<f64>; 3])> = None;
    loop {
        let applied = reads::applied(&mut connection, &redis.key_prefix).await?;
        if applied > 0 && first.is_none() {
            first = Some((Instant::now(), applied, cpu()));
        }
        if applied as u64 >= total {
            let (at, base, cpu_before) = first.expect("set when anything was applied");
            let events = (applied - base) as f64;
            let rate = events / at.elapsed().as_secs_f64();
            let after = cpu();
            let us = |i: usize| Some(1e6 * (after[i]? - cpu_before[i]?) / events.max(1.0));
            let (ingester_us, broker_us, redis_us) = (us(0).unwrap_or_default(), us(1).unwrap_or_default(), us(2));
            let per_event = CpuPerEvent {
                ingester_us,
                broker_us,
                redis_us,
                cores_at_target: redis_us
                    .map(|redis| (ingester_us + broker_us + redis) * TARGET_EVENTS_PER_SECOND / 1e6),
            };
            run.await??;
            return Ok((rate, per_event));
        }
        if run.is_finished() || Instant::now() > deadline {
            bail!("the ingester stopped at {applied} of {total} events");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
