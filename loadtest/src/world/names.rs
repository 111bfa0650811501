//! The strings events carry for the world's entities, formatted once and shared: serving an
//! impression then copies pointers (raw features) or strings (id fields) instead of formatting
//! them (the hot path of event generation).

use std::sync::Arc;

use super::WorldConfig;

#[derive(Debug, Clone)]
pub(super) struct Names {
    pub(super) users: Vec<Arc<str>>,
    pub(super) advertisers: Vec<Arc<str>>,
    pub(super) ads: Vec<Arc<str>>,
    pub(super) segments: Vec<Arc<str>>,
    pub(super) devices: Vec<Arc<str>>,
    pub(super) countries: Vec<Arc<str>>,
    pub(super) categories: Vec<Arc<str>>,
    pub(super) formats: Vec<Arc<str>>,
    pub(super) surfaces: Vec<Arc<str>>,
}

fn numbered(prefix: &str, count: u32) -> Vec<Arc<str>> {
    (0..count).map(|i| format!("{prefix}{i}").into()).collect()
}

impl Names {
    pub(super) fn new(config: &WorldConfig) -> Self {
        Self {
            users: numbered("u", config.users),
            advertisers: numbered("v", config.advertisers),
            ads: Vec::new(),
            segments: numbered("seg", config.segments),
            devices: numbered("dev", config.devices),
            countries: numbered("c", config.countries),
            categories: numbered("cat", config.categories),
            formats: numbered("fmt", config.formats),
            surfaces: config.surfaces.iter().map(|s| s.as_str().into()).collect(),
        }
    }

    /// Names every ad up to `count` (ads are only ever added).
    pub(super) fn cover_ads(&mut self, count: usize) {
        while self.ads.len() < count {
            self.ads.push(format!("a{}", self.ads.len()).into());
        }
    }

    pub(super) fn user(&self, user: u32) -> &str {
        &self.users[user as usize]
    }

    pub(super) fn advertiser(&self, advertiser: u32) -> &str {
        &self.advertisers[advertiser as usize]
    }

    pub(super) fn ad(&self, ad: u32) -> &str {
        &self.ads[ad as usize]
    }
}
