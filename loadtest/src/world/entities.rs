//! Users and the ad catalog.

use super::{DAY_MS, WorldConfig, rng::Rng, truth::Truth};

/// A user's static attributes (its bias and vector live in the truth).
#[derive(Debug, Clone)]
pub(super) struct User {
    pub(super) segment: u32,
    pub(super) device: u32,
    pub(super) country: u32,
}

impl User {
    pub(super) fn draw(rng: &mut Rng, config: &WorldConfig, truth: &mut Truth) -> Self {
        let own = truth.draw_user(rng);
        let user = Self {
            segment: rng.below(u64::from(config.segments)) as u32,
            device: rng.below(u64::from(config.devices)) as u32,
            country: rng.below(u64::from(config.countries)) as u32,
        };
        truth.add_user(own, [user.segment, user.country, user.device]);
        user
    }
}

/// An ad's attributes (its bias and vector live in the truth).
#[derive(Debug, Clone)]
pub(super) struct Ad {
    pub(super) advertiser: u32,
    pub(super) category: u32,
    pub(super) format: u32,
    pub(super) bid: f64,
    pub(super) created_ms: i64,
    pub(super) retire_ms: i64,
}

impl Ad {
    /// An ad created at `created_ms` that, seen at `now_ms`, lives on for an exponential time
    /// (memoryless, so the initial catalog looks like one that has been running for ever).
    pub(super) fn draw(
        rng: &mut Rng,
        config: &WorldConfig,
        (created_ms, now_ms): (i64, i64),
        truth: &mut Truth,
    ) -> Self {
        let own = truth.draw_ad(rng);
        let ad = Self {
            advertiser: rng.below(u64::from(config.advertisers)) as u32,
            category: rng.below(u64::from(config.categories)) as u32,
            format: rng.below(u64::from(config.formats)) as u32,
            bid: (config.bid_log_mean + config.bid_log_std * rng.normal()).exp(),
            created_ms,
            retire_ms: now_ms + (rng.exponential(config.ad_lifetime_days) * DAY_MS as f64) as i64 + 1,
        };
        truth.add_ad(own, [ad.category, ad.advertiser, ad.format]);
        ad
    }
}

const NOT_LIVE: u32 = u32::MAX;

/// Every ad ever created, with O(1) random draws from the live ones, overall and per category.
#[derive(Debug, Clone)]
pub(super) struct Catalog {
    ads: Vec<Ad>,
    /// Bids by ad, apart from the rest so ranking by bid reads one dense array.
    bids: Vec<f64>,
    live: Vec<u32>,
    live_position: Vec<u32>,
    by_category: Vec<Vec<u32>>,
    category_position: Vec<u32>,
}

impl Catalog {
    pub(super) fn new(categories: u32) -> Self {
        Self {
            ads: Vec::new(),
            bids: Vec::new(),
            live: Vec::new(),
            live_position: Vec::new(),
            by_category: vec![Vec::new(); categories as usize],
            category_position: Vec::new(),
        }
    }

    /// Adds a live ad and returns its index.
    pub(super) fn add(&mut self, ad: Ad) -> u32 {
        let index = self.ads.len() as u32;
        self.live_position.push(self.live.len() as u32);
        self.live.push(index);
        let list = &mut self.by_category[ad.category as usize];
        self.category_position.push(list.len() as u32);
        list.push(index);
        self.bids.push(ad.bid);
        self.ads.push(ad);
        index
    }

    pub(super) fn len(&self) -> usize {
        self.ads.len()
    }

    pub(super) fn ad(&self, index: u32) -> &Ad {
        &self.ads[index as usize]
    }

    pub(super) fn bid(&self, index: u32) -> f64 {
        self.bids[index as usize]
    }

    pub(super) fn live(&self) -> &[u32] {
        &self.live
    }

    pub(super) fn is_live(&self, index: u32) -> bool {
        self.live_position[index as usize] != NOT_LIVE
    }

    pub(super) fn random_live(&self, rng: &mut Rng) -> u32 {
        self.live[rng.below(self.live.len() as u64) as usize]
    }

    pub(super) fn random_in_category(&self, rng: &mut Rng, category: u32) -> Option<u32> {
        let list = &self.by_category[category as usize];
        (!list.is_empty()).then(|| list[rng.below(list.len() as u64) as usize])
    }

    /// Retires every live ad whose time is up at `at_ms`, returning them in index order.
    pub(super) fn retire_due(&mut self, at_ms: i64) -> Vec<u32> {
        let mut due: Vec<u32> =
            self.live.iter().copied().filter(|&ad| self.ads[ad as usize].retire_ms <= at_ms).collect();
        due.sort_unstable();
        for &ad in &due {
            remove(&mut self.live, &mut self.live_position, ad);
            let category = self.ads[ad as usize].category as usize;
            remove(&mut self.by_category[category], &mut self.category_position, ad);
        }
        due
    }
}

/// Swap-removes `ad` from `list`, keeping `positions` (indexed by ad) right.
fn remove(list: &mut Vec<u32>, positions: &mut [u32], ad: u32) {
    let at = positions[ad as usize] as usize;
    let last = *list.last().expect("a live ad is in the list; this is a bug");
    list.swap_remove(at);
    if last != ad {
        positions[last as usize] = at as u32;
    }
    positions[ad as usize] = NOT_LIVE;
}
