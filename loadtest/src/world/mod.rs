//! The synthetic ads world: users, advertisers and ads whose true click probabilities are
//! known, so that model quality and business lift can be measured against ground truth.
//!
//! - [`config`]: the `[world]` section.
//! - [`truth`]: the true click probability and its daily drift.
//! - `taste`: latent vectors shared by attribute values, plus individual deviations.
//! - [`rng`]: the portable random generator behind "same seed, same events".
//! - `entities`, `counters`: the catalog (ads arrive and retire, so some are always new) and
//!   the 7-day counters a feature store would hold (history pairs included), which the world
//!   logs as raw features.
//!
//! A [`World`] advances simulated time one request at a time: [`World::next_request`] draws a
//! user (Zipf activity), a context and candidates (part from the user's favourite categories,
//! part random live ads); [`World::serve`] shows the top of a ranked slate, samples clicks from
//! the truth and returns impression and click events in the Kafka contract.

pub mod config;
mod counters;
mod entities;
mod names;
pub mod rng;
mod taste;
pub mod truth;

use adrank_contracts::{
    events::{AdRecord, AdStatus, Click, Impression, RawFeatures, RawValue, UserProfile},
    request::{Candidate, RankRequest, RequestContext},
};

pub use config::WorldConfig;
use counters::Counters;
use entities::{Ad, Catalog, User};
use names::Names;
use rng::{Alias, Rng};
pub use truth::{Situation, Truth};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Requests whose shown slots calibrate the global bias.
const CALIBRATION_REQUESTS: u32 = 10_000;

/// How many favourite categories the relevant candidates are drawn from.
const FAVOURITES: usize = 4;

/// A ranking request as the world knows it (indices, not strings).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    pub time_ms: i64,
    pub user: u32,
    pub surface: u32,
    pub hour: u32,
    /// Ad indices, all live and distinct.
    pub candidates: Vec<u32>,
}

/// What showing one slate produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Served {
    pub impressions: Vec<Impression>,
    pub clicks: Vec<Click>,
    /// The situation of each impression (same order), to recompute its truth later.
    pub situations: Vec<Situation>,
}

/// The world.
#[derive(Debug, Clone)]
pub struct World {
    config: WorldConfig,
    truth: Truth,
    rng: Rng,
    users: Vec<User>,
    activity: Alias,
    catalog: Catalog,
    names: Names,
    counters: Counters,
    favourites: Vec<Vec<u32>>,
    requests: u64,
    now_ms: i64,
    /// Whole days since the start that have been drifted.
    day: i64,
    /// Catalog changes (new and retired ads) not yet taken by [`World::take_catalog_changes`].
    catalog_changes: Vec<u32>,
    /// Marks candidates already drawn for the current request (by the low 32 bits of its id),
    /// so drawing distinct candidates costs no set. 32 bits halve the memory touched at random;
    /// the marks are cleared when the counter wraps.
    drawn: Vec<u32>,
}

impl World {
    /// Builds the world and calibrates the global bias to the configured mean CTR. The config
    /// must have passed [`WorldConfig::problems`].
    pub fn new(config: WorldConfig) -> Self {
        let mut rng = Rng::new(config.seed, 0);
        let mut truth = Truth::new(&mut rng, &config);
        let users: Vec<User> = (0..config.users).map(|_| User::draw(&mut rng, &config, &mut truth)).collect();
        let weights: Vec<f64> = (1..=users.len()).map(|rank| (rank as f64).powf(-config.zipf_exponent)).collect();
        for _ in 0..config.advertisers {
            truth.add_advertiser(&mut rng);
        }
        let mut catalog = Catalog::new(config.categories);
        for _ in 0..config.ads {
            let age = (rng.exponential(config.ad_lifetime_days) * DAY_MS as f64) as i64;
            let ad = Ad::draw(&mut rng, &config, (config.start_time_ms - age, config.start_time_ms), &mut truth);
            catalog.add(ad);
        }
        let favourites = (0..config.segments as usize).map(|s| truth.favourite_categories(s, FAVOURITES)).collect();
        let counters = Counters::new(users.len(), catalog.len(), config.advertisers as usize);
        let mut names = Names::new(&config);
        names.cover_ads(catalog.len());
        let mut world = Self {
            names,
            drawn: vec![0; catalog.len()],
            now_ms: config.start_time_ms,
            activity: Alias::new(&weights),
            config,
            truth,
            rng,
            users,
            catalog,
            counters,
            favourites,
            requests: 0,
            day: 0,
            catalog_changes: Vec::new(),
        };
        world.truth.global_bias = world.calibrated_global_bias();
        world
    }

    /// The global bias that makes the mean true CTR of shown slots under the baseline policy
    /// (rank by bid) equal the configured mean CTR, measured on a copy of the world whose
    /// requests are spread over one whole day (the hour-of-day effect averages out).
    fn calibrated_global_bias(&self) -> f64 {
        let mut probe = self.clone();
        probe.config.requests_per_hour = CALIBRATION_REQUESTS / 24;
        let mut logits = Vec::new();
        for _ in 0..CALIBRATION_REQUESTS {
            let request = probe.next_request();
            for (position, &ad) in probe.rank_by_bid(&request).iter().enumerate() {
                logits.push(probe.truth.relative_logit(&probe.situation(&request, ad, position as u32)));
            }
        }
        let mean_p = |bias: f64| logits.iter().map(|l| truth::sigmoid(bias + l)).sum::<f64>() / logits.len() as f64;
        let (mut low, mut high) = (-30.0, 30.0);
        for _ in 0..100 {
            let mid = (low + high) / 2.0;
            if mean_p(mid) < self.config.mean_ctr { low = mid } else { high = mid }
        }
        (low + high) / 2.0
    }

    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    /// The truth as it is now.
    pub fn truth(&self) -> &Truth {
        &self.truth
    }

    /// Simulated time, milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Live ads created less than `max_age_ms` ago.
    pub fn young_live_ads(&self, max_age_ms: i64) -> usize {
        self.catalog.live().iter().filter(|&&ad| self.now_ms - self.catalog.ad(ad).created_ms < max_age_ms).count()
    }

    /// The next request; simulated time advances by one request interval, and with it ad churn
    /// (hourly) and drift (daily).
    pub fn next_request(&mut self) -> Request {
        self.requests += 1;
        let time_ms =
            self.config.start_time_ms + (self.requests as i64 * HOUR_MS) / i64::from(self.config.requests_per_hour);
        self.advance_to(time_ms);
        let user = self.activity.sample(&mut self.rng) as u32;
        let surface = self.rng.below(self.config.surfaces.len() as u64) as u32;
        let hour = (time_ms.rem_euclid(DAY_MS) / HOUR_MS) as u32;
        let id = self.requests;
        // 1..=u32::MAX: never the 0 that fresh marks hold.
        let mark = (id % u64::from(u32::MAX)) as u32 + 1;
        if mark == 1 {
            self.drawn.fill(0);
        }
        let wanted = (self.config.candidates as usize).min(self.catalog.live().len());
        let relevant = ((wanted as f64) * self.config.relevant_fraction).round() as usize;
        let favourites = &self.favourites[self.users[user as usize].segment as usize];
        let mut candidates = Vec::with_capacity(wanted);
        // Relevant candidates: live ads in the user's segment's favourite categories. A few
        // tries each; a category can be small, and then a random ad fills the place.
        for _ in 0..relevant * 3 {
            if candidates.len() == relevant {
                break;
            }
            let category = favourites[self.rng.below(favourites.len() as u64) as usize];
            if let Some(ad) = self.catalog.random_in_category(&mut self.rng, category)
                && self.drawn[ad as usize] != mark
            {
                self.drawn[ad as usize] = mark;
                candidates.push(ad);
            }
        }
        while candidates.len() < wanted {
            let ad = self.catalog.random_live(&mut self.rng);
            if self.drawn[ad as usize] != mark {
                self.drawn[ad as usize] = mark;
                candidates.push(ad);
            }
        }
        Request { id, time_ms, user, surface, hour, candidates }
    }

    /// The baseline policy: the shown slots, highest bid first.
    pub fn rank_by_bid(&self, request: &Request) -> Vec<u32> {
        // Bids are gathered once into a small contiguous buffer: comparing through the catalog
        // would chase a pointer per comparison.
        let mut ranked: Vec<(f64, u32)> = request.candidates.iter().map(|&ad| (self.catalog.bid(ad), ad)).collect();
        let shown = (self.config.shown_slots as usize).min(ranked.len());
        let by_bid = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if shown < ranked.len() {
            ranked.select_nth_unstable_by(shown, by_bid);
            ranked.truncate(shown);
        }
        ranked.sort_by(by_bid);
        ranked.into_iter().map(|(_, ad)| ad).collect()
    }

    /// The next request served by the baseline policy (rank by bid): what `sim bootstrap`
    /// publishes and what the benchmarks time.
    pub fn serve_baseline(&mut self) -> Served {
        let request = self.next_request();
        let slate = self.rank_by_bid(&request);
        self.serve(&request, &slate, None, ("baseline", "bid"))
    }

    /// The ad indices of `ad_ids` among the request's candidates, in order; `None` when one
    /// is not a candidate of this request.
    pub fn slate_of(&self, request: &Request, ad_ids: &[&str]) -> Option<Vec<u32>> {
        ad_ids.iter().map(|id| request.candidates.iter().copied().find(|&ad| self.names.ad(ad) == *id)).collect()
    }

    /// The expected revenue (true click probability x bid, summed over the shown slots) of
    /// showing `slate` (ranked ad indices) for `request`.
    pub fn expected_revenue(&self, request: &Request, slate: &[u32]) -> f64 {
        let shown = &slate[..slate.len().min(self.config.shown_slots as usize)];
        shown
            .iter()
            .enumerate()
            .map(|(position, &ad)| self.truth.p(&self.situation(request, ad, position as u32)) * self.catalog.bid(ad))
            .sum()
    }

    /// The oracle ranking: the candidates by true click probability at the top slot x bid, the
    /// rule serving applies to its predictions, applied to the truth.
    pub fn rank_by_truth(&self, request: &Request) -> Vec<u32> {
        self.rank_by(request, |s| self.truth.p(s))
    }

    /// The learnable ceiling's ranking: the same rule applied to [`Truth::ceiling_p`], the best
    /// a model that learns taste from attributes can rank.
    pub fn rank_by_ceiling(&self, request: &Request) -> Vec<u32> {
        self.rank_by(request, |s| self.truth.ceiling_p(s))
    }

    fn rank_by(&self, request: &Request, p: impl Fn(&Situation) -> f64) -> Vec<u32> {
        let mut ranked: Vec<(f64, u32)> = request
            .candidates
            .iter()
            .map(|&ad| (p(&self.situation(request, ad, 0)) * self.catalog.bid(ad), ad))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.truncate(self.config.shown_slots as usize);
        ranked.into_iter().map(|(_, ad)| ad).collect()
    }

    /// Serves `days` of requests with the baseline policy and forgets them: the world then
    /// stands exactly where `sim bootstrap --days` or `sim history --days` left it (same truth,
    /// drift and catalog), so a load test can continue the history instead of repeating it.
    pub fn replay_baseline_days(&mut self, days: f64) {
        let requests = (days * 24.0 * f64::from(self.config.requests_per_hour)).round() as u64;
        for _ in 0..requests {
            self.serve_baseline();
        }
    }

    /// The situation of showing `ad` at `position` for `request`.
    pub fn situation(&self, request: &Request, ad: u32, position: u32) -> Situation {
        let a = self.catalog.ad(ad);
        Situation {
            user: request.user,
            segment: self.users[request.user as usize].segment,
            ad,
            advertiser: a.advertiser,
            category: a.category,
            surface: request.surface,
            hour: request.hour,
            position,
        }
    }

    /// Shows the top `shown_slots` of `slate` (ad indices in ranked order, with the model's
    /// scores), samples clicks from the truth and returns the events.
    pub fn serve(&mut self, request: &Request, slate: &[u32], scores: Option<&[f64]>, model: (&str, &str)) -> Served {
        let mut served = Served::default();
        let request_id = format!("s{}-r{}", self.config.seed, request.id);
        // Ids differ only in their last part: format the common prefix once.
        let impression_prefix = format!("s{}-i{}-", self.config.seed, request.id);
        let shown = &slate[..slate.len().min(self.config.shown_slots as usize)];
        // Every slot's features first: serving scores the whole slate before anything in it is
        // seen, so no slot's counters may include a neighbour's impression or click.
        for (position, &ad) in shown.iter().enumerate() {
            let situation = self.situation(request, ad, position as u32);
            let a = self.catalog.ad(ad);
            served.impressions.push(Impression {
                impression_id: with_suffix(&impression_prefix, position),
                request_id: request_id.clone(),
                event_time_ms: request.time_ms,
                user_id: self.names.user(request.user).to_string(),
                ad_id: self.names.ad(ad).to_string(),
                advertiser_id: self.names.advertiser(a.advertiser).to_string(),
                position: position as u16,
                surface: self.config.surfaces[request.surface as usize].clone(),
                model_name: model.0.into(),
                model_version: model.1.into(),
                score: scores.and_then(|s| s.get(position)).copied().unwrap_or(0.0).clamp(0.0, 1.0),
                bid: a.bid,
                features: self.raw_features(request, ad),
                oracle_p: Some(self.truth.p(&situation)),
                rollout: None,
                shadow_score: None,
            });
            served.situations.push(situation);
        }
        for (impression, situation) in served.impressions.iter().zip(&served.situations) {
            let p = impression.oracle_p.expect("set just above; this is a bug");
            let clicked = self.rng.bernoulli(p);
            let touched = counters::Touched {
                user: situation.user,
                ad: situation.ad,
                advertiser: situation.advertiser,
                category: situation.category,
            };
            self.counters.record(touched, clicked);
            if clicked {
                // Clicks come a few seconds after the impression.
                let delay = (self.rng.exponential(20_000.0) as i64).min(10 * 60_000);
                let click_id =
                    with_suffix(&format!("s{}-c{}-", self.config.seed, request.id), impression.position.into());
                served.clicks.push(Click::on(impression, click_id, request.time_ms + delay));
            }
        }
        served
    }

    /// The raw features serving would have seen for this candidate: context, user and ad
    /// attributes, and the 7-day counters (the user's history with the ad's category and
    /// advertiser among them) as they stand.
    fn raw_features(&self, request: &Request, ad: u32) -> RawFeatures {
        let user = &self.users[request.user as usize];
        let a = self.catalog.ad(ad);
        let (user_clicks, user_impressions) = self.counters.user(request.user);
        let (ad_clicks, ad_impressions) = self.counters.ad(ad);
        let (adv_clicks, adv_impressions) = self.counters.advertiser(a.advertiser);
        let [(category_clicks, category_impressions), (pair_clicks, pair_impressions)] =
            self.counters.history(request.user, a.category, a.advertiser);
        let text = |s: &std::sync::Arc<str>| RawValue::Str(s.clone());
        let num = |x: f64| RawValue::Num(x);
        let names = &self.names;
        // Keys in sorted order: building the map then needs no reordering.
        RawFeatures::from([
            ("ad_age_hours".into(), num(((request.time_ms - a.created_ms) as f64 / HOUR_MS as f64).max(0.0))),
            ("ad_clicks_7d".into(), num(f64::from(ad_clicks))),
            ("ad_id".into(), text(&names.ads[ad as usize])),
            ("ad_impressions_7d".into(), num(f64::from(ad_impressions))),
            ("advertiser_clicks_7d".into(), num(f64::from(adv_clicks))),
            ("advertiser_id".into(), text(&names.advertisers[a.advertiser as usize])),
            ("advertiser_impressions_7d".into(), num(f64::from(adv_impressions))),
            ("bid".into(), num(a.bid)),
            ("category".into(), text(&names.categories[a.category as usize])),
            ("country".into(), text(&names.countries[user.country as usize])),
            ("device".into(), text(&names.devices[user.device as usize])),
            ("format".into(), text(&names.formats[a.format as usize])),
            ("hour".into(), num(f64::from(request.hour))),
            ("segment".into(), text(&names.segments[user.segment as usize])),
            ("surface".into(), text(&names.surfaces[request.surface as usize])),
            ("user_advertiser_clicks_7d".into(), num(f64::from(pair_clicks))),
            ("user_advertiser_impressions_7d".into(), num(f64::from(pair_impressions))),
            ("user_category_clicks_7d".into(), num(f64::from(category_clicks))),
            ("user_category_impressions_7d".into(), num(f64::from(category_impressions))),
            ("user_clicks_7d".into(), num(f64::from(user_clicks))),
            ("user_id".into(), text(&names.users[request.user as usize])),
            ("user_impressions_7d".into(), num(f64::from(user_impressions))),
        ])
    }

    /// The request as the ranking API's JSON body.
    pub fn rank_request(&self, request: &Request) -> RankRequest {
        RankRequest {
            request_id: format!("s{}-r{}", self.config.seed, request.id),
            user_id: self.names.user(request.user).to_string(),
            context: RequestContext {
                surface: self.config.surfaces[request.surface as usize].clone(),
                event_time_ms: request.time_ms,
                features: RawFeatures::from([("hour".into(), RawValue::Num(f64::from(request.hour)))]),
            },
            candidates: request
                .candidates
                .iter()
                .map(|&ad| {
                    let a = self.catalog.ad(ad);
                    Candidate {
                        ad_id: self.names.ad(ad).to_string(),
                        advertiser_id: self.names.advertiser(a.advertiser).to_string(),
                        bid: a.bid,
                        features: RawFeatures::new(),
                    }
                })
                .collect(),
            // The product shows this many slots: the rest is neither shown nor logged.
            top_k: Some(self.config.shown_slots),
            deadline_ms: None,
        }
    }

    /// Every user's profile.
    pub fn user_profiles(&self) -> impl Iterator<Item = UserProfile> + '_ {
        self.users.iter().enumerate().map(|(i, user)| UserProfile {
            user_id: self.names.user(i as u32).to_string(),
            event_time_ms: self.config.start_time_ms,
            attributes: RawFeatures::from([
                ("segment".into(), RawValue::from(self.names.segments[user.segment as usize].clone())),
                ("device".into(), RawValue::from(self.names.devices[user.device as usize].clone())),
                ("country".into(), RawValue::from(self.names.countries[user.country as usize].clone())),
            ]),
        })
    }

    /// Every live ad's catalog record.
    pub fn live_catalog(&self) -> Vec<AdRecord> {
        self.catalog.live().iter().map(|&ad| self.ad_record(ad, self.now_ms)).collect()
    }

    /// Catalog records of the ads that arrived or retired since the last call.
    pub fn take_catalog_changes(&mut self) -> Vec<AdRecord> {
        let changes = std::mem::take(&mut self.catalog_changes);
        changes.into_iter().map(|ad| self.ad_record(ad, self.now_ms)).collect()
    }

    fn ad_record(&self, ad: u32, time_ms: i64) -> AdRecord {
        let a = self.catalog.ad(ad);
        AdRecord {
            ad_id: self.names.ad(ad).to_string(),
            advertiser_id: self.names.advertiser(a.advertiser).to_string(),
            event_time_ms: time_ms,
            status: if self.catalog.is_live(ad) { AdStatus::Live } else { AdStatus::Retired },
            attributes: RawFeatures::from([
                ("category".into(), RawValue::from(self.names.categories[a.category as usize].clone())),
                ("format".into(), RawValue::from(self.names.formats[a.format as usize].clone())),
            ]),
        }
    }

    /// Moves simulated time to `time_ms`: hourly ad churn and daily drift on the way.
    fn advance_to(&mut self, time_ms: i64) {
        let start = self.config.start_time_ms;
        let hours_before = (self.now_ms - start).div_euclid(HOUR_MS);
        let hours_after = (time_ms - start).div_euclid(HOUR_MS);
        for hour in hours_before + 1..=hours_after {
            let at = start + hour * HOUR_MS;
            self.churn(at);
            if hour % 24 == 0 {
                self.day += 1;
                let live = self.catalog.live().to_vec();
                self.truth.drift(
                    &mut self.rng,
                    self.config.vector_drift_per_day,
                    self.config.affinity_drift_per_day,
                    &live,
                );
                self.favourites = (0..self.config.segments as usize)
                    .map(|s| self.truth.favourite_categories(s, FAVOURITES))
                    .collect();
                self.counters.next_day();
            }
        }
        self.now_ms = time_ms;
    }

    /// Retires the ads whose time is up and brings new ones, keeping the live count.
    fn churn(&mut self, at_ms: i64) {
        for ad in self.catalog.retire_due(at_ms) {
            self.catalog_changes.push(ad);
        }
        while self.catalog.live().len() < self.config.ads as usize {
            let ad = Ad::draw(&mut self.rng, &self.config, (at_ms, at_ms), &mut self.truth);
            let index = self.catalog.add(ad);
            self.counters.add_ad();
            self.names.cover_ads(self.catalog.len());
            self.drawn.push(0);
            self.catalog_changes.push(index);
        }
    }
}

/// `prefix` followed by `n` in decimal.
fn with_suffix(prefix: &str, n: usize) -> String {
    use std::fmt::Write as _;
    let mut id = String::with_capacity(prefix.len() + 4);
    id.push_str(prefix);
    let _ = write!(id, "{n}");
    id
}

#[cfg(test)]
mod tests;
