//! The strings events carry for the world's entities, formatted once: serving an impression
//! then copies strings instead of formatting them (the hot path of event generation).

use super::WorldConfig;

#[derive(Debug, Clone)]
pub(super) struct Names {
    users: Vec<String>,
    advertisers: Vec<String>,
    ads: Vec<String>,
    pub(super) segments: Vec<String>,
    pub(super) devices: Vec<String>,
    pub(super) countries: Vec<String>,
    pub(super) categories: Vec<String>,
    pub(super) formats: Vec<String>,
}

fn numbered(prefix: &str, count: u32) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
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
        }
    }

    /// Names every ad up to `count` (ads are only ever added).
    pub(super) fn cover_ads(&mut self, count: usize) {
        while self.ads.len() < count {
            self.ads.push(format!("a{}", self.ads.len()));
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
