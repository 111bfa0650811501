//! Online read latency and ingestion freshness, measured from outside the code under test.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use adrank_contracts::{events::Event as _, request::RankRequest};
use adrank_featurestore::{
    IngestConfig, KafkaConfig, RedisConfig,
    ingest::{Ingester, RunOptions},
    kafka,
    online::{self, AdRef, Reader, Wanted},
};
use adrank_loadtest::{generator::cpu_seconds, world::World};
use anyhow::bail;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

/// Latency percentiles, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(super) struct Percentiles {
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self { p50: at(0.5), p99: at(0.99), max: at(1.0) }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Results {
    pub(super) reads: usize,
    pub(super) ads_per_read: usize,
    /// One round trip (one `MGET`), every stored attribute kept.
    pub(super) all_attributes_seconds: Percentiles,
    /// One round trip, keeping only the attributes the feature spec reads (what serving does).
    pub(super) pipelined_seconds: Percentiles,
    /// The CPU those reads cost, per read.
    pub(super) pipelined_cpu: CpuPerRead,
    /// The same with the ad cache on.
    pub(super) cached_seconds: Percentiles,
    pub(super) naive_reads: usize,
    pub(super) naive_seconds: Percentiles,
}

/// What one read costs each side, in CPU microseconds: with the latency, it tells the work from
/// the waiting (a read is serial: Redis answers, then the client decodes).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(super) struct CpuPerRead {
    /// This process: the read client, and the loop's own work between reads.
    pub(super) client_us: Option<f64>,
    /// Redis, when it runs on this machine: all of its work over the reads.
    pub(super) redis_us: Option<f64>,
}

/// The sum of the applied-offset watermarks under `prefix`.
pub(super) async fn applied(connection: &mut redis::aio::MultiplexedConnection, prefix: &str) -> anyhow::Result<i64> {
    let offsets: BTreeMap<String, i64> =
        redis::cmd("HGETALL").arg(format!("{prefix}ingest:offsets")).query_async(connection).await?;
    Ok(offsets.values().sum())
}

/// Times `reads` reads of the world's next requests (one user and its candidates), without
/// and with the ad cache, and a tenth as many (at most 1,000) with one round trip per entity.
/// `pids`: this process's and Redis's (when local), whose CPU the reads are charged.
pub(super) async fn measure(
    redis: &RedisConfig,
    world: &mut World,
    reads: usize,
    wanted: Wanted,
    pids: [Option<u32>; 2],
) -> anyhow::Result<Results> {
    let whole = Reader::connect(&RedisConfig { cache_ttl_ms: 0, ..redis.clone() }).await?;
    let plain = whole.clone().with_wanted(wanted.clone());
    let cached = Reader::connect(&RedisConfig { cache_ttl_ms: 1_000, ..redis.clone() }).await?.with_wanted(wanted);
    let requests = next_requests(world, reads.max(1));
    let ads_per_read = requests[0].candidates.len();
    // Each loop runs as a task of the runtime, as serving's request handlers do: awaited from
    // the main thread (`block_on`), every reply would wake a worker that polls the sockets and
    // then the main thread, a hop serving never takes.
    let timed = |reader: &Reader| {
        let reader = reader.clone();
        let requests = requests.clone();
        async move {
            let cpu = || pids.map(|pid| pid.and_then(|pid| cpu_seconds(&format!("/proc/{pid}/stat"))));
            let before = cpu();
            let mut samples = Vec::with_capacity(requests.len());
            for (i, request) in requests.iter().enumerate() {
                let elapsed = timed_read(&reader, request).await?;
                // The first hundred warm connections and caches up.
                if i >= 100.min(requests.len() / 10) {
                    samples.push(elapsed.as_secs_f64());
                }
            }
            let after = cpu();
            let us = |i: usize| Some(1e6 * (after[i]? - before[i]?) / requests.len() as f64);
            anyhow::Ok((Percentiles::of(samples), CpuPerRead { client_us: us(0), redis_us: us(1) }))
        }
    };
    let (all_attributes_seconds, _) = tokio::spawn(timed(&whole)).await??;
    let (pipelined_seconds, pipelined_cpu) = tokio::spawn(timed(&plain)).await??;
    let (cached_seconds, _) = tokio::spawn(timed(&cached)).await??;

    // Naive: one awaited GET per entity, as a feature server without a batched read does; a
    // task too, so that both sides of the ratio wake the same way.
    let mut connection = online::connect(redis).await?;
    let naive_reads = (reads / 10).clamp(1, 1_000);
    let prefix = redis.key_prefix.clone();
    let naive = requests.clone();
    let samples = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(naive_reads);
        for request in naive.iter().take(naive_reads) {
            let started = Instant::now();
            let mut keys = vec![online::layout::Entity::User.key(&prefix, &request.user_id)];
            for candidate in &request.candidates {
                keys.push(online::layout::Entity::Ad.key(&prefix, &candidate.ad_id));
                keys.push(online::layout::Entity::Advertiser.key(&prefix, &candidate.advertiser_id));
            }
            for key in keys {
                let _: redis::Value = redis::cmd("GET").arg(key).query_async(&mut connection).await?;
            }
            samples.push(started.elapsed().as_secs_f64());
        }
        anyhow::Ok(samples)
    })
    .await??;
    Ok(Results {
        reads: requests.len(),
        ads_per_read,
        all_attributes_seconds,
        pipelined_seconds,
        pipelined_cpu,
        cached_seconds,
        naive_reads,
        naive_seconds: Percentiles::of(samples),
    })
}

/// The world's next `n` requests, as serving receives them.
fn next_requests(world: &mut World, n: usize) -> Arc<Vec<RankRequest>> {
    Arc::new(
        (0..n)
            .map(|_| {
                let request = world.next_request();
                world.rank_request(&request)
            })
            .collect(),
    )
}

/// One read of a request's user and candidates; the time until the answer, not its drop.
async fn timed_read(reader: &Reader, request: &RankRequest) -> anyhow::Result<Duration> {
    let ads: Vec<AdRef<'_>> =
        request.candidates.iter().map(|c| AdRef { ad_id: &c.ad_id, advertiser_id: &c.advertiser_id }).collect();
    let started = Instant::now();
    let fetched = reader.fetch(&request.user_id, &ads, request.context.event_time_ms).await?;
    let elapsed = started.elapsed();
    drop(fetched);
    Ok(elapsed)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What the paced phase measured.
pub(super) struct Freshness {
    /// Events whose freshness was measured.
    pub(super) events: usize,
    pub(super) seconds: Percentiles,
    /// Reads made meanwhile, one every [`READ_EVERY`].
    pub(super) reads: usize,
    pub(super) read_seconds: Percentiles,
}

/// The pace of the reads made while the ingester applies the paced events.
pub(super) const READ_EVERY: Duration = Duration::from_millis(5);

/// Produces impressions stamped with the wall clock at `rate` per second for `secs` while an
/// ingester runs, and measures for each the time until Redis's watermark covers its offset;
/// meanwhile reads one request every [`READ_EVERY`] with `read`'s config and wanted features.
pub(super) async fn freshness(
    kafka: &KafkaConfig,
    redis: &RedisConfig,
    ingest: &IngestConfig,
    world: &mut World,
    read: (RedisConfig, Wanted),
    rate: f64,
    secs: u64,
) -> anyhow::Result<Freshness> {
    let ingester = Ingester::new(kafka, redis, ingest).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(ingester.run(RunOptions::default(), async move {
        let _ = stopped.await;
    }));
    let producer: FutureProducer = kafka::producer_config(kafka).set("linger.ms", "1").create()?;
    let topic = kafka.topics.impressions.name.clone();
    let mut connection = online::connect(redis).await?;
    let watermarks = |connection: &mut redis::aio::MultiplexedConnection| {
        let key = format!("{}ingest:offsets", redis.key_prefix);
        let mut connection = connection.clone();
        let prefix = format!("{topic}:");
        async move {
            let offsets: BTreeMap<String, i64> = redis::cmd("HGETALL").arg(key).query_async(&mut connection).await?;
            anyhow::Ok(
                offsets
                    .into_iter()
                    .filter_map(|(field, offset)| Some((field.strip_prefix(&prefix)?.parse::<i32>().ok()?, offset)))
                    .collect::<BTreeMap<i32, i64>>(),
            )
        }
    };

    // Wait until the ingester has joined: a probe impression becomes visible.
    let mut impressions = VecDeque::new();
    let next = |world: &mut World, impressions: &mut VecDeque<_>| {
        if impressions.is_empty() {
            impressions.extend(world.serve_baseline().impressions);
        }
        let mut impression: adrank_contracts::events::Impression =
            impressions.pop_front().expect("the world serves at least one impression per request");
        impression.event_time_ms = now_ms();
        impression
    };
    let probe = next(world, &mut impressions);
    let delivery = producer
        .send(FutureRecord::to(&topic).key(probe.key()).payload(&probe.encode()), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)?;
    let (partition, offset) = (delivery.partition, delivery.offset);
    let joined = Instant::now();
    while watermarks(&mut connection).await?.get(&partition).is_none_or(|&w| w <= offset) {
        if joined.elapsed() > Duration::from_secs(60) {
            bail!("the freshness ingester did not apply a probe within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Meanwhile serving's read, as it would run beside the ingester: Redis runs one command at
    // a time, so a read waits for whatever apply script is running. Serving is another
    // process: the reads get a thread and a runtime of their own, so that they do not queue
    // behind this process's ingester tasks.
    let requests = next_requests(world, 1_000);
    let reading = std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let (config, wanted) = read;
            let reader = Reader::connect(&config).await?.with_wanted(wanted);
            let deadline = Instant::now() + Duration::from_secs(secs);
            let mut tick = tokio::time::interval(READ_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut samples = Vec::new();
            for request in requests.iter().cycle() {
                tick.tick().await;
                if Instant::now() >= deadline {
                    break;
                }
                samples.push(timed_read(&reader, request).await?.as_secs_f64());
            }
            // The first few warm the connections up.
            Ok(samples.split_off(samples.len().min(20)))
        })
    });

    // Paced production; deliveries (partition, offset, event time) flow to the watcher.
    let (delivered_tx, mut delivered) = tokio::sync::mpsc::unbounded_channel::<(i32, i64, i64)>();
    let started = Instant::now();
    let mut sent = 0u64;
    // Per partition: offset -> event time (deliveries may be reported out of order).
    let mut pending: BTreeMap<i32, BTreeMap<i64, i64>> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    loop {
        tick.tick().await;
        let elapsed = started.elapsed();
        if elapsed < Duration::from_secs(secs) {
            let due = (elapsed.as_secs_f64() * rate) as u64;
            while sent < due {
                let impression = next(world, &mut impressions);
                let time = impression.event_time_ms;
                let payload = impression.encode();
                let record = FutureRecord::to(&topic).key(impression.key()).payload(&payload);
                let delivery = producer.send_result(record).map_err(|(e, _)| e)?;
                let tx = delivered_tx.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(delivery)) = delivery.await {
                        let _ = tx.send((delivery.partition, delivery.offset, time));
                    }
                });
                sent += 1;
            }
        } else if pending.values().all(BTreeMap::is_empty) && samples.len() as u64 >= sent {
            break;
        } else if elapsed > Duration::from_secs(secs + 60) {
            bail!("{} of {sent} events never became visible", sent - samples.len() as u64);
        }
        while let Ok((partition, offset, time)) = delivered.try_recv() {
            pending.entry(partition).or_default().insert(offset, time);
        }
        let marks = watermarks(&mut connection).await?;
        let now = now_ms();
        for (partition, queue) in &mut pending {
            let mark = marks.get(partition).copied().unwrap_or(0);
            while let Some(entry) = queue.first_entry().filter(|e| *e.key() < mark) {
                let time = entry.remove();
                samples.push((now - time).max(0) as f64 / 1000.0);
            }
        }
    }
    let _ = stop.send(());
    run.await??;
    let reads = tokio::task::spawn_blocking(move || reading.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the reading thread panicked"))??;
    Ok(Freshness {
        events: samples.len(),
        seconds: Percentiles::of(samples),
        reads: reads.len(),
        read_seconds: Percentiles::of(reads),
    })
}
