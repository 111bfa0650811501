//! The events on Kafka: impressions, clicks, user profiles and ad-catalog records.
//!
//! Each is one JSON object per Kafka message (the schema is in `docs/events.md`), so any Kafka
//! client can produce them. Decoding is strict: unknown fields, wrong types, empty ids,
//! out-of-range numbers and evaluation-only fields in the wrong place are rejected with the
//! field and the rule, so the ingester can dead-letter them with a reason.
//!
//! Message keys: an impression and its clicks are both keyed by the impression id, and the two
//! topics have the same partition count, so Kafka's key hashing puts them in the same partition
//! and one ingester sees both. Profiles are keyed by user id, catalog records by ad id.

pub mod integer;
mod intern;
pub mod object;
mod raw;

use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use raw::{Input, Lookup, RawFeatures, RawValue};

/// The longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// The name of the evaluation-only truth field, which no feature may read.
pub const ORACLE_FIELD: &str = "oracle_p";

/// An ad shown to a user in one slot of one ranked response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Impression {
    /// Unique per impression; also the Kafka key, shared with its clicks.
    pub impression_id: String,
    /// The ranking request this impression answered.
    pub request_id: String,
    /// When it was served, milliseconds since the Unix epoch.
    #[serde(deserialize_with = "integer::int")]
    pub event_time_ms: i64,
    pub user_id: String,
    pub ad_id: String,
    pub advertiser_id: String,
    /// The slot, 0 for the top.
    #[serde(deserialize_with = "integer::int")]
    pub position: u16,
    /// Where it was shown (feed, search, …).
    pub surface: String,
    /// The model that scored it.
    pub model_name: String,
    pub model_version: String,
    /// The predicted click probability, in [0, 1].
    pub score: f64,
    /// The advertiser's bid, non-negative.
    pub bid: f64,
    /// The exact raw feature values the model saw: training uses these, so it learns from what
    /// serving knew at the time (no leakage from later data, no train/serve skew).
    pub features: RawFeatures,
    /// Evaluation only: the true click probability, known in the synthetic world. Never a
    /// feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oracle_p: Option<f64>,
    /// The rollout and the arm the user was in, when a rollout was under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutArm>,
    /// At a rollout's shadow step, for a sampled request: the candidate's score for this
    /// impression (it served none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_score: Option<f64>,
}

/// Where a rollout put an impression's user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutArm {
    /// The rollout's id among the model's rollouts (1, 2, …).
    #[serde(deserialize_with = "integer::int")]
    pub id: u64,
    /// `production` or `candidate`.
    pub arm: String,
}

/// The values a rollout arm may take.
pub const ROLLOUT_ARMS: [&str; 2] = ["production", "candidate"];

impl Impression {
    /// The served ad's category: its `category` feature, when it is a string.
    pub fn category(&self) -> Option<&str> {
        match self.features.get(CATEGORY_FIELD) {
            Some(RawValue::Str(category)) if !category.is_empty() => Some(&**category),
            _ => None,
        }
    }

    /// A minimal valid impression with the given id and raw features, for tests and examples.
    pub fn example(impression_id: &str, features: RawFeatures) -> Self {
        Self {
            impression_id: impression_id.into(),
            request_id: "r-1".into(),
            event_time_ms: 0,
            user_id: "u-1".into(),
            ad_id: "a-1".into(),
            advertiser_id: "adv-1".into(),
            position: 0,
            surface: "feed".into(),
            model_name: "ctr".into(),
            model_version: "1".into(),
            score: 0.5,
            bid: 1.0,
            features,
            oracle_p: None,
            rollout: None,
            shadow_score: None,
        }
    }
}

/// A click on an impression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Click {
    /// Unique per click (a retried click keeps its id, so it counts once).
    pub click_id: String,
    /// The impression clicked; the Kafka key.
    pub impression_id: String,
    /// When the click happened, milliseconds since the Unix epoch.
    #[serde(deserialize_with = "integer::int")]
    pub event_time_ms: i64,
    /// Copied from the impression so counters can be updated without the join.
    pub user_id: String,
    pub ad_id: String,
    pub advertiser_id: String,
    /// The ad's category as served (the impression's `category` feature), so the user x
    /// category history counters count the click without the join; absent, they do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// The impression feature that names the ad's category: the user x category history counters
/// count impressions and clicks by it.
pub const CATEGORY_FIELD: &str = "category";

impl Click {
    /// A click on `impression` at `event_time_ms`, carrying the impression's ids.
    pub fn on(impression: &Impression, click_id: String, event_time_ms: i64) -> Self {
        Self {
            click_id,
            impression_id: impression.impression_id.clone(),
            event_time_ms,
            user_id: impression.user_id.clone(),
            ad_id: impression.ad_id.clone(),
            advertiser_id: impression.advertiser_id.clone(),
            category: impression.category().map(str::to_string),
        }
    }
}

/// A user's profile: its static attributes as of `event_time_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserProfile {
    /// The Kafka key.
    pub user_id: String,
    #[serde(deserialize_with = "integer::int")]
    pub event_time_ms: i64,
    /// Attributes by name (segment, device, country, …), read by the feature spec's
    /// user-store features.
    pub attributes: RawFeatures,
}

/// Whether an ad can be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdStatus {
    Live,
    Retired,
}

/// An ad-catalog record: an ad as of `event_time_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdRecord {
    /// The Kafka key.
    pub ad_id: String,
    pub advertiser_id: String,
    #[serde(deserialize_with = "integer::int")]
    pub event_time_ms: i64,
    pub status: AdStatus,
    /// Attributes by name (category, format, …), read by the ad-store features.
    pub attributes: RawFeatures,
}

/// Why a record was rejected: the field (empty for the record as a whole) and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() { f.write_str(&self.reason) } else { write!(f, "`{}` {}", self.field, self.reason) }
    }
}

impl std::error::Error for EventError {}

impl EventError {
    pub(crate) fn new(field: &str, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// What every event type shares: its Kafka key and its rules beyond the JSON shape.
pub trait Event: Serialize + DeserializeOwned {
    /// The Kafka message key.
    fn key(&self) -> &str;

    /// Checks the rules the JSON shape cannot express.
    fn validate(&self) -> Result<(), EventError>;

    /// When it happened, milliseconds since the Unix epoch.
    fn event_time_ms(&self) -> i64;

    /// Decodes and validates one JSON message.
    fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        let event: Self = object::from_slice(bytes).map_err(|e| EventError::new("", json_reason(&e)))?;
        event.validate()?;
        Ok(event)
    }

    /// Encodes as compact JSON. Deterministic: the same event gives the same bytes.
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events serialise to JSON; this is a bug")
    }
}

fn json_reason(error: &serde_json::Error) -> String {
    match error.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => format!("is not valid JSON: {error}"),
        serde_json::error::Category::Data => format!("does not match the schema: {error}"),
        serde_json::error::Category::Io => format!("cannot be read: {error}"),
    }
}

pub(crate) fn id(field: &str, value: &str) -> Result<(), EventError> {
    if value.is_empty() {
        return Err(EventError::new(field, "is empty; ids have 1 to 128 bytes"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(EventError::new(field, format!("has {} bytes; ids have at most {MAX_ID_BYTES}", value.len())));
    }
    if value.chars().any(char::is_control) {
        return Err(EventError::new(field, "contains a control character"));
    }
    Ok(())
}

/// The latest event time accepted, the last millisecond of the year 9999: a later one is a
/// mistake (seconds or microseconds for milliseconds), and the online store indexes its counter
/// buckets with 32 bits.
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// Refuses an event time more than `skew_ms` after `reference_ms`, a clock the receiver trusts
/// (its own, or when the message was published). Past times are fine (backfills), but a future
/// one would close every waiting window of its partition at once (a click) or never close and
/// pin the replay point (an impression).
pub fn not_ahead(field: &str, value: i64, reference_ms: i64, skew_ms: i64) -> Result<(), EventError> {
    let ahead = value.saturating_sub(reference_ms);
    if ahead > skew_ms {
        return Err(EventError::new(
            field,
            format!(
                "is {value}, {ahead} ms ahead of the receiving clock ({reference_ms}); at most {skew_ms} ms ahead \
                 is accepted (a sender's clock set wrong, or seconds or microseconds for milliseconds?)"
            ),
        ));
    }
    Ok(())
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn time(field: &str, value: i64) -> Result<(), EventError> {
    if !(0..=MAX_EVENT_TIME_MS).contains(&value) {
        return Err(EventError::new(
            field,
            format!(
                "is {value}; expected milliseconds since the Unix epoch, from 0 to {MAX_EVENT_TIME_MS} (year 9999)"
            ),
        ));
    }
    Ok(())
}

fn probability(field: &str, value: f64) -> Result<(), EventError> {
    if !(0.0..=1.0).contains(&value) {
        return Err(EventError::new(field, format!("is {value}; expected a probability in [0, 1]")));
    }
    Ok(())
}

pub(crate) fn not_empty(field: &str, value: &str) -> Result<(), EventError> {
    if value.trim().is_empty() {
        return Err(EventError::new(field, "is empty"));
    }
    Ok(())
}

pub(crate) fn features(field: &str, values: &RawFeatures) -> Result<(), EventError> {
    if values.contains_key(ORACLE_FIELD) {
        return Err(EventError::new(
            &format!("{field}.{ORACLE_FIELD}"),
            "is evaluation-only; it may appear only as the impression's top-level oracle_p",
        ));
    }
    if let Some(name) = values.keys().find(|k| k.is_empty()) {
        return Err(EventError::new(&format!("{field}.{name}"), "has an empty name"));
    }
    Ok(())
}

impl Event for Impression {
    fn key(&self) -> &str {
        &self.impression_id
    }

    fn event_time_ms(&self) -> i64 {
        self.event_time_ms
    }

    fn validate(&self) -> Result<(), EventError> {
        id("impression_id", &self.impression_id)?;
        id("request_id", &self.request_id)?;
        id("user_id", &self.user_id)?;
        id("ad_id", &self.ad_id)?;
        id("advertiser_id", &self.advertiser_id)?;
        time("event_time_ms", self.event_time_ms)?;
        not_empty("surface", &self.surface)?;
        not_empty("model_name", &self.model_name)?;
        not_empty("model_version", &self.model_version)?;
        probability("score", self.score)?;
        if !(self.bid >= 0.0 && self.bid.is_finite()) {
            return Err(EventError::new("bid", format!("is {}; expected a non-negative amount", self.bid)));
        }
        features("features", &self.features)?;
        if let Some(p) = self.oracle_p {
            probability(ORACLE_FIELD, p)?;
        }
        if let Some(p) = self.shadow_score {
            probability("shadow_score", p)?;
        }
        if let Some(RolloutArm { id, arm }) = &self.rollout {
            if *id == 0 {
                return Err(EventError::new("rollout.id", "is 0; rollouts count from 1"));
            }
            if !ROLLOUT_ARMS.contains(&arm.as_str()) {
                return Err(EventError::new("rollout.arm", format!("is `{arm}`; expected one of {ROLLOUT_ARMS:?}")));
            }
        }
        Ok(())
    }
}

impl Event for Click {
    fn key(&self) -> &str {
        &self.impression_id
    }

    fn event_time_ms(&self) -> i64 {
        self.event_time_ms
    }

    fn validate(&self) -> Result<(), EventError> {
        id("click_id", &self.click_id)?;
        id("impression_id", &self.impression_id)?;
        id("user_id", &self.user_id)?;
        id("ad_id", &self.ad_id)?;
        id("advertiser_id", &self.advertiser_id)?;
        if let Some(category) = &self.category {
            not_empty("category", category)?;
        }
        time("event_time_ms", self.event_time_ms)
    }
}

impl Event for UserProfile {
    fn key(&self) -> &str {
        &self.user_id
    }

    fn event_time_ms(&self) -> i64 {
        self.event_time_ms
    }

    fn validate(&self) -> Result<(), EventError> {
        id("user_id", &self.user_id)?;
        time("event_time_ms", self.event_time_ms)?;
        features("attributes", &self.attributes)
    }
}

impl Event for AdRecord {
    fn key(&self) -> &str {
        &self.ad_id
    }

    fn event_time_ms(&self) -> i64 {
        self.event_time_ms
    }

    fn validate(&self) -> Result<(), EventError> {
        id("ad_id", &self.ad_id)?;
        id("advertiser_id", &self.advertiser_id)?;
        time("event_time_ms", self.event_time_ms)?;
        features("attributes", &self.attributes)
    }
}

#[cfg(test)]
mod tests;
