//! 7-day impression and click counters per user, ad and advertiser: what the feature store
//! would hold when serving, so the world logs them as raw features.

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
}

#[derive(Debug, Clone)]
pub(super) struct Counters {
    users: Vec<Window>,
    ads: Vec<Window>,
    advertisers: Vec<Window>,
    slot: usize,
}

impl Counters {
    pub(super) fn new(users: usize, ads: usize, advertisers: usize) -> Self {
        Self {
            users: vec![Window::default(); users],
            ads: vec![Window::default(); ads],
            advertisers: vec![Window::default(); advertisers],
            slot: 0,
        }
    }

    pub(super) fn add_ad(&mut self) {
        self.ads.push(Window::default());
    }

    pub(super) fn record(&mut self, user: u32, ad: u32, advertiser: u32, clicked: bool) {
        let slot = self.slot;
        for window in
            [&mut self.users[user as usize], &mut self.ads[ad as usize], &mut self.advertisers[advertiser as usize]]
        {
            window.impressions[slot] += 1;
            window.clicks[slot] += u32::from(clicked);
        }
    }

    /// Starts a new day: the oldest day leaves the window.
    pub(super) fn next_day(&mut self) {
        self.slot = (self.slot + 1) % DAYS;
        let slot = self.slot;
        for window in self.users.iter_mut().chain(&mut self.ads).chain(&mut self.advertisers) {
            window.impressions[slot] = 0;
            window.clicks[slot] = 0;
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
}
