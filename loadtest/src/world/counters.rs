//! 7-day impression and click counters per user, ad and advertiser, and per user with an ad
//! category and with an advertiser (history): what the feature store would hold when serving,
//! so the world logs them as raw features.

use std::collections::HashMap;

/// Days in the window.
const DAYS: usize = 7;

#[derive(Debug, Clone, Copy, Default)]
struct Window {
    impressions: [u32; DAYS],
    clicks: [u32; DAYS],
}

impl Window {
    fn sums(&self) -> (u32, u32) {
        (self.clicks.iter().sum(), self.impressions.iter().sum())
    }

    fn record(&mut self, slot: usize, clicked: bool) {
        self.impressions[slot] += 1;
        self.clicks[slot] += u32::from(clicked);
    }

    fn clear(&mut self, slot: usize) {
        self.impressions[slot] = 0;
        self.clicks[slot] = 0;
    }

    fn is_empty(&self) -> bool {
        self.impressions.iter().all(|&n| n == 0) && self.clicks.iter().all(|&n| n == 0)
    }
}

/// An event's entities: the user, the ad, its advertiser and its category.
#[derive(Debug, Clone, Copy)]
pub(super) struct Touched {
    pub(super) user: u32,
    pub(super) ad: u32,
    pub(super) advertiser: u32,
    pub(super) category: u32,
}

#[derive(Debug, Clone)]
pub(super) struct Counters {
    users: Vec<Window>,
    ads: Vec<Window>,
    advertisers: Vec<Window>,
    /// By (user, category) and (user, advertiser): only the pairs with counts in the window (a
    /// week touches a small share of all pairs).
    user_categories: HashMap<(u32, u32), Window>,
    user_advertisers: HashMap<(u32, u32), Window>,
    slot: usize,
}

impl Counters {
    pub(super) fn new(users: usize, ads: usize, advertisers: usize) -> Self {
        Self {
            users: vec![Window::default(); users],
            ads: vec![Window::default(); ads],
            advertisers: vec![Window::default(); advertisers],
            user_categories: HashMap::new(),
            user_advertisers: HashMap::new(),
            slot: 0,
        }
    }

    pub(super) fn add_ad(&mut self) {
        self.ads.push(Window::default());
    }

    pub(super) fn record(&mut self, t: Touched, clicked: bool) {
        let slot = self.slot;
        for window in [
            &mut self.users[t.user as usize],
            &mut self.ads[t.ad as usize],
            &mut self.advertisers[t.advertiser as usize],
        ] {
            window.record(slot, clicked);
        }
        self.user_categories.entry((t.user, t.category)).or_default().record(slot, clicked);
        self.user_advertisers.entry((t.user, t.advertiser)).or_default().record(slot, clicked);
    }

    /// Starts a new day: the oldest day leaves the window.
    pub(super) fn next_day(&mut self) {
        self.slot = (self.slot + 1) % DAYS;
        let slot = self.slot;
        for window in self.users.iter_mut().chain(&mut self.ads).chain(&mut self.advertisers) {
            window.clear(slot);
        }
        for pairs in [&mut self.user_categories, &mut self.user_advertisers] {
            pairs.retain(|_, window| {
                window.clear(slot);
                !window.is_empty()
            });
        }
    }

    /// (clicks, impressions) over the last 7 days.
    pub(super) fn user(&self, user: u32) -> (u32, u32) {
        self.users[user as usize].sums()
    }

    pub(super) fn ad(&self, ad: u32) -> (u32, u32) {
        self.ads[ad as usize].sums()
    }

    pub(super) fn advertiser(&self, advertiser: u32) -> (u32, u32) {
        self.advertisers[advertiser as usize].sums()
    }

    /// The user's (clicks, impressions) with a category, and with an advertiser.
    pub(super) fn history(&self, user: u32, category: u32, advertiser: u32) -> [(u32, u32); 2] {
        let sums = |pairs: &HashMap<(u32, u32), Window>, other| pairs.get(&(user, other)).map_or((0, 0), Window::sums);
        [sums(&self.user_categories, category), sums(&self.user_advertisers, advertiser)]
    }
}
