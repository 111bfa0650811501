//! adrank's ranking API as a load-test workload: request bodies from the synthetic world, and
//! what the replies say. Every reply's timing breakdown is collected; in closed-loop mode the
//! world also shows each reply's top slots to its user, samples clicks from the true click
//! probabilities, sends them to `POST /v1/events/click`, and keeps the business figures of
//! every model version that served.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use adrank_contracts::grpc::v1;

use crate::{
    generator::{Api, Source, histogram, http},
    world::{Request, Served, World},
};

/// The parts of a ranking reply the harness reads (from JSON, or from the gRPC message).
#[derive(Debug, Deserialize)]
struct Reply {
    model: ModelRef,
    ranked: Vec<RankedAd>,
    #[serde(default)]
    degraded: bool,
    timing: Timing,
}

#[derive(Debug, Deserialize)]
struct ModelRef {
    name: String,
    version: u64,
}

#[derive(Debug, Deserialize)]
struct RankedAd {
    ad_id: String,
    pctr: f64,
    /// The prediction at the slot shown in, for the shown slots (when the server gives it).
    #[serde(default)]
    shown_pctr: Option<f64>,
    /// Present for the candidates the server logged as shown.
    #[serde(default)]
    impression_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Timing {
    features_ms: f64,
    queue_ms: f64,
    inference_ms: f64,
    /// Absent from servers before the shown slots were scored again.
    #[serde(default)]
    shown_ms: f64,
    total_ms: f64,
    batch_rows: u64,
}

/// The server's own account of where time went, over the measured replies.
#[derive(Debug, Clone)]
pub struct ServerTimings {
    /// Microseconds by stage: `features`, `queue`, `inference`, `shown` (the shown slots scored
    /// again), `total` (inside the server).
    pub stages: BTreeMap<&'static str, Histogram<u64>>,
    /// Rows in the model run that scored each request.
    pub batch_rows: Histogram<u64>,
    pub degraded: u64,
    /// 200 replies whose body was not a ranking reply (a bug on one side or the other).
    pub unparsable: u64,
    /// Replies by the model version (`name/version`) that scored them.
    pub versions: BTreeMap<String, u64>,
}

impl Default for ServerTimings {
    fn default() -> Self {
        Self {
            stages: ["features", "queue", "inference", "shown", "total"]
                .into_iter()
                .map(|s| (s, histogram()))
                .collect(),
            batch_rows: Histogram::new_with_bounds(1, 1 << 20, 3).expect("valid histogram bounds; this is a bug"),
            degraded: 0,
            unparsable: 0,
            versions: BTreeMap::new(),
        }
    }
}

impl ServerTimings {
    fn record(&mut self, reply: &Reply) {
        let t = &reply.timing;
        for (stage, ms) in [
            ("features", t.features_ms),
            ("queue", t.queue_ms),
            ("inference", t.inference_ms),
            ("shown", t.shown_ms),
            ("total", t.total_ms),
        ] {
            let micros = (ms * 1000.0).round().max(1.0) as u64;
            self.stages.get_mut(stage).expect("stages are fixed").saturating_record(micros);
        }
        self.batch_rows.saturating_record(t.batch_rows.max(1));
        self.degraded += u64::from(reply.degraded);
        *self.versions.entry(format!("{}/{}", reply.model.name, reply.model.version)).or_default() += 1;
    }
}

/// What one model version earned in closed-loop mode, against the oracle ranking.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Business {
    pub requests: u64,
    pub impressions: u64,
    pub clicks: u64,
    /// Bids of the clicked ads (cost per click).
    pub revenue: f64,
    /// True click probability x bid over the shown slots: revenue without the sampling noise.
    pub expected_revenue: f64,
    /// The same for the oracle ranking, the learnable ceiling's ranking and the baseline
    /// ranking by bid alone, of the same requests.
    pub oracle_revenue: f64,
    pub ceiling_revenue: f64,
    pub bid_only_revenue: f64,
    /// Mean predicted CTR over the shown slots, beside the true one (calibration).
    pub predicted_ctr_sum: f64,
    pub true_ctr_sum: f64,
    /// Every shown slot as (position, predicted CTR, true CTR), for calibration by position and
    /// by predicted-CTR decile.
    #[serde(skip)]
    pub shown: Vec<(u16, f32, f32)>,
}

impl Business {
    pub fn ctr(&self) -> f64 {
        self.clicks as f64 / self.impressions.max(1) as f64
    }

    /// Revenue per thousand requests.
    pub fn rpm(&self) -> f64 {
        1000.0 * self.revenue / self.requests.max(1) as f64
    }

    /// Expected revenue lost against the oracle ranking, per thousand requests.
    pub fn regret_per_mille(&self) -> f64 {
        1000.0 * (self.oracle_revenue - self.expected_revenue) / self.requests.max(1) as f64
    }

    /// Expected revenue as a fraction of the oracle's.
    pub fn oracle_share(&self) -> f64 {
        if self.oracle_revenue > 0.0 { self.expected_revenue / self.oracle_revenue } else { 0.0 }
    }

    /// Books one served request (its shown slots are kept by the caller when it wants them).
    fn book(&mut self, served: &Served, rankings: [f64; 4], scores: &[f64]) {
        let [expected, oracle, ceiling, bid_only] = rankings;
        self.requests += 1;
        self.impressions += served.impressions.len() as u64;
        self.clicks += served.clicks.len() as u64;
        self.revenue += served
            .clicks
            .iter()
            .map(|c| served.impressions.iter().find(|i| i.impression_id == c.impression_id).map_or(0.0, |i| i.bid))
            .sum::<f64>();
        self.expected_revenue += expected;
        self.oracle_revenue += oracle;
        self.ceiling_revenue += ceiling;
        self.bid_only_revenue += bid_only;
        self.predicted_ctr_sum += scores.iter().sum::<f64>();
        self.true_ctr_sum += served.impressions.iter().filter_map(|i| i.oracle_p).sum::<f64>();
    }
}

/// Clicks sent to the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClickDelivery {
    pub accepted: u64,
    /// By status code, or 0 for no reply.
    pub refused: BTreeMap<u16, u64>,
    /// Replies whose slate named an ad that was not a candidate of the request.
    pub foreign_ads: u64,
}

enum Feed {
    /// The same bodies over and over (open loop, no world state).
    Fixed(Vec<Bytes>),
    /// Fresh requests from a world thread, a couple of seconds ahead of the schedule.
    World { world: Arc<Mutex<World>>, bodies: tokio::sync::Mutex<mpsc::Receiver<(Bytes, Request)>> },
}

/// The workload.
pub struct Ranking {
    feed: Feed,
    /// Bodies and replies are protobuf (gRPC), else JSON.
    grpc: bool,
    timings: Mutex<ServerTimings>,
    business: Mutex<BTreeMap<String, Business>>,
    /// The same by simulated hour (the request's time, truncated) and version.
    hourly: Mutex<BTreeMap<(i64, String), Business>>,
    clicks: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    delivery: Arc<Mutex<ClickDelivery>>,
    sender: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Ranking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranking").field("closed_loop", &matches!(self.feed, Feed::World { .. })).finish()
    }
}

/// The request's body in the API's encoding.
fn body(world: &World, request: &Request, api: &Api) -> Bytes {
    let request = world.rank_request(request);
    match api {
        Api::Http(_) => Bytes::from(serde_json::to_vec(&request).expect("requests serialise")),
        Api::Grpc => Bytes::from(prost::Message::encode_to_vec(&v1::RankRequest::from(&request))),
    }
}

/// A reply in the API's encoding, as the parts the harness reads.
fn parse(body: &[u8], grpc: bool) -> Option<Reply> {
    if !grpc {
        return serde_json::from_slice(body).ok();
    }
    let reply = <v1::RankResponse as prost::Message>::decode(body).ok()?;
    let (model, timing) = (reply.model?, reply.timing?);
    Some(Reply {
        model: ModelRef { name: model.name, version: model.version },
        ranked: reply
            .ranked
            .into_iter()
            .map(|r| RankedAd {
                ad_id: r.ad_id,
                pctr: r.pctr,
                shown_pctr: r.shown_pctr,
                impression_id: r.impression_id,
            })
            .collect(),
        degraded: reply.degraded,
        timing: Timing {
            features_ms: timing.features_ms,
            queue_ms: timing.queue_ms,
            inference_ms: timing.inference_ms,
            shown_ms: timing.shown_ms,
            total_ms: timing.total_ms,
            batch_rows: timing.batch_rows,
        },
    })
}

impl Ranking {
    /// Open loop: `count` requests from the world, cycled, encoded for `api`.
    pub fn fixed(world: &mut World, count: usize, api: &Api) -> Self {
        let bodies = (0..count.max(1))
            .map(|_| {
                let request = world.next_request();
                body(world, &request, api)
            })
            .collect();
        Self::with_feed(Feed::Fixed(bodies), api)
    }

    /// Closed loop: a fresh request from `world` for every send (`ahead` of them buffered,
    /// encoded for `api`), clicks sampled from each reply and sent to the click endpoint of the
    /// HTTP server at `target`.
    pub fn closed_loop(world: World, ahead: usize, target: SocketAddr, api: &Api) -> Self {
        let world = Arc::new(Mutex::new(world));
        let (tx, rx) = mpsc::channel(ahead.max(1));
        let feeder = Arc::clone(&world);
        let encoding = api.clone();
        std::thread::Builder::new()
            .name("world-feed".into())
            .spawn(move || {
                loop {
                    let item = {
                        let mut world = feeder.lock().unwrap_or_else(|e| e.into_inner());
                        let request = world.next_request();
                        (body(&world, &request, &encoding), request)
                    };
                    if tx.blocking_send(item).is_err() {
                        return; // the run is over
                    }
                }
            })
            .expect("cannot start the world thread");
        let ranking = Self::with_feed(Feed::World { world, bodies: tokio::sync::Mutex::new(rx) }, api);
        let (clicks, mut queue) = mpsc::unbounded_channel::<Bytes>();
        let delivery = Arc::clone(&ranking.delivery);
        let sender = tokio::spawn(async move {
            let mut connection = http::Connection::new(target);
            while let Some(click) = queue.recv().await {
                let status = match connection.post("/v1/events/click", &click, Duration::from_secs(10)).await {
                    Ok((status, _)) => status,
                    Err(_) => 0,
                };
                let mut delivery = delivery.lock().unwrap_or_else(|e| e.into_inner());
                match status {
                    200..=299 => delivery.accepted += 1,
                    other => *delivery.refused.entry(other).or_default() += 1,
                }
            }
        });
        *ranking.clicks.lock().expect("fresh") = Some(clicks);
        *ranking.sender.lock().expect("fresh") = Some(sender);
        ranking
    }

    fn with_feed(feed: Feed, api: &Api) -> Self {
        Self {
            feed,
            grpc: *api == Api::Grpc,
            timings: Mutex::default(),
            business: Mutex::default(),
            hourly: Mutex::default(),
            clicks: Mutex::default(),
            delivery: Arc::default(),
            sender: Mutex::default(),
        }
    }

    /// Waits until every click sampled so far has been delivered (or refused).
    pub async fn finish(&self) {
        self.clicks.lock().unwrap_or_else(|e| e.into_inner()).take();
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(sender) = sender {
            let _ = sender.await;
        }
    }

    /// The server timings so far, and resets them (a sweep reads them step by step).
    pub fn take_timings(&self) -> ServerTimings {
        std::mem::take(&mut *self.timings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Business figures by model version (`name/version`).
    pub fn business(&self) -> BTreeMap<String, Business> {
        self.business.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Impressions and clicks so far by model version (`name/version`): the cheap part of
    /// [`Ranking::business`], for a live view.
    pub fn clicks_by_version(&self) -> BTreeMap<String, (u64, u64)> {
        let business = self.business.lock().unwrap_or_else(|e| e.into_inner());
        business.iter().map(|(version, b)| (version.clone(), (b.impressions, b.clicks))).collect()
    }

    /// The world's simulated time (closed loop).
    pub fn simulated_ms(&self) -> Option<i64> {
        match &self.feed {
            Feed::World { world, .. } => Some(world.lock().unwrap_or_else(|e| e.into_inner()).now_ms()),
            Feed::Fixed(_) => None,
        }
    }

    /// Business figures by simulated hour (start, ms) and model version, without the shown slots.
    pub fn hourly(&self) -> BTreeMap<(i64, String), Business> {
        self.hourly.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn clicks(&self) -> ClickDelivery {
        self.delivery.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Shows the reply's slate to the world: samples clicks, sends them, books the figures.
    fn close_the_loop(&self, world: &Mutex<World>, request: &Request, reply: &Reply, measured: bool) {
        let mut world = world.lock().unwrap_or_else(|e| e.into_inner());
        let shown = reply.ranked.len().min(world.config().shown_slots as usize);
        let ids: Vec<&str> = reply.ranked[..shown].iter().map(|r| r.ad_id.as_str()).collect();
        let Some(slate) = world.slate_of(request, &ids) else {
            self.delivery.lock().unwrap_or_else(|e| e.into_inner()).foreign_ads += 1;
            return;
        };
        let expected = world.expected_revenue(request, &slate);
        let oracle = world.expected_revenue(request, &world.rank_by_truth(request));
        let ceiling = world.expected_revenue(request, &world.rank_by_ceiling(request));
        let bid_only = world.expected_revenue(request, &world.rank_by_bid(request));
        // Calibration compares the prediction where each ad is shown with its true CTR there.
        let scores: Vec<f64> = reply.ranked[..shown].iter().map(|r| r.shown_pctr.unwrap_or(r.pctr)).collect();
        let version = reply.model.version.to_string();
        let served = world.serve(request, &slate, Some(&scores), (&reply.model.name, &version));
        drop(world);
        let clicks = self.clicks.lock().unwrap_or_else(|e| e.into_inner());
        for mut click in served.clicks.iter().cloned() {
            // The world names impressions its own way; the server's id is the one it logged.
            let position = served.impressions.iter().position(|i| i.impression_id == click.impression_id);
            let Some(id) = position.and_then(|p| reply.ranked.get(p)?.impression_id.as_ref()) else { continue };
            click.impression_id.clone_from(id);
            if let Some(clicks) = clicks.as_ref() {
                let _ = clicks.send(Bytes::from(serde_json::to_vec(&click).expect("clicks serialise")));
            }
        }
        drop(clicks);
        if !measured {
            return;
        }
        let rankings = [expected, oracle, ceiling, bid_only];
        let key = format!("{}/{}", reply.model.name, reply.model.version);
        let hour = request.time_ms - request.time_ms.rem_euclid(3_600_000);
        let mut hourly = self.hourly.lock().unwrap_or_else(|e| e.into_inner());
        hourly.entry((hour, key.clone())).or_default().book(&served, rankings, &scores);
        drop(hourly);
        let mut business = self.business.lock().unwrap_or_else(|e| e.into_inner());
        let b = business.entry(key).or_default();
        b.book(&served, rankings, &scores);
        for (i, score) in served.impressions.iter().zip(&scores) {
            b.shown.push((i.position, *score as f32, i.oracle_p.unwrap_or(0.0) as f32));
        }
    }
}

impl Source for Ranking {
    type Tag = Option<Request>;

    async fn next(&self, i: usize) -> Option<(Bytes, Option<Request>)> {
        match &self.feed {
            Feed::Fixed(bodies) => Some((bodies[i % bodies.len()].clone(), None)),
            Feed::World { bodies, .. } => bodies.lock().await.recv().await.map(|(body, request)| (body, Some(request))),
        }
    }

    fn reply(&self, request: Option<Request>, status: u16, body: &[u8], measured: bool) {
        if status != 200 {
            return;
        }
        let Some(reply) = parse(body, self.grpc) else {
            if measured {
                self.timings.lock().unwrap_or_else(|e| e.into_inner()).unparsable += 1;
            }
            return;
        };
        if measured {
            self.timings.lock().unwrap_or_else(|e| e.into_inner()).record(&reply);
        }
        if let (Feed::World { world, .. }, Some(request)) = (&self.feed, request) {
            self.close_the_loop(world, &request, &reply, measured);
        }
    }
}
