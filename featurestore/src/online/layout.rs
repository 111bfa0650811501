//! How the online store lays entities out in Redis: one hash per entity, shaped for the read
//! path (one `HGETALL` per entity, no per-feature round trips).
//!
//! ```text
//! {prefix}u:{user_id}        a:segment, a:device, …   profile attributes (type-tagged values)
//! {prefix}a:{ad_id}          a:category, a:format, a:advertiser_id, a:status, created_ms
//! {prefix}v:{advertiser_id}  (counters only)
//!   every entity also has:   seen_ms   the newest event time that touched it (read-time TTL)
//!                            w1h, w1d, w7d  impression and click counters, one ring per window
//!                            updated_ms the event time of the attributes held (last writer wins)
//!                            expires_ms when Redis deletes the hash (wall clock; garbage
//!                                       collection only: reads apply the TTL themselves)
//! {prefix}ingest:offsets     {topic}:{partition} -> next offset to apply (exactly-once watermark)
//! ```
//!
//! The counters are ring buffers of time buckets, one field per window in [`WINDOWS`]: the
//! newest bucket's index, then `(impressions, clicks)` per slot, little-endian `u32`s. One small
//! field per window instead of one per bucket keeps a read of 400 entities small, and every
//! value stays under Redis's 64-byte compact-hash limit. A read sums, per window, the buckets
//! that lie in the window ending at the read's time, so counts age out exactly even for an
//! entity nobody writes any more.

use crate::events::RawValue;

/// The kinds of entity the online store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    User,
    Ad,
    Advertiser,
}

impl Entity {
    /// The short tag in the entity's Redis key.
    fn tag(self) -> &'static str {
        match self {
            Self::User => "u",
            Self::Ad => "a",
            Self::Advertiser => "v",
        }
    }

    /// The feature holding this entity's id (`user_id`, …).
    pub fn id_feature(self) -> &'static str {
        match self {
            Self::User => "user_id",
            Self::Ad => "ad_id",
            Self::Advertiser => "advertiser_id",
        }
    }

    /// The prefix of this entity's counter features (`user_clicks_7d`, …).
    pub fn feature_prefix(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Ad => "ad",
            Self::Advertiser => "advertiser",
        }
    }

    /// The Redis key of one entity.
    pub fn key(self, prefix: &str, id: &str) -> String {
        let mut key = String::with_capacity(prefix.len() + 2 + id.len());
        self.write_key(prefix, id, &mut key);
        key
    }

    /// Writes the Redis key of one entity into `key`, replacing what it held.
    pub fn write_key(self, prefix: &str, id: &str, key: &mut String) {
        key.clear();
        key.push_str(prefix);
        key.push_str(self.tag());
        key.push(':');
        key.push_str(id);
    }
}

/// The hash holding each partition's applied-offset watermark.
pub fn offsets_key(prefix: &str) -> String {
    format!("{prefix}ingest:offsets")
}

/// The field of one topic partition in the offsets hash.
pub fn offsets_field(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

/// Hash fields that are not attributes.
pub const SEEN_FIELD: &str = "seen_ms";
pub const UPDATED_FIELD: &str = "updated_ms";
pub const CREATED_FIELD: &str = "created_ms";
/// When Redis deletes the hash (wall clock): garbage collection, not an effect of the events.
pub const EXPIRES_FIELD: &str = "expires_ms";
/// Attribute fields carry this prefix, so no attribute name can collide with the fields above.
pub const ATTRIBUTE_PREFIX: &str = "a:";

/// One counter window: a ring of `buckets` buckets of `bucket_ms` each, the newest being the
/// bucket that holds the read time. A 7-day window of day buckets counts today and the six
/// days before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The suffix of its features: `user_clicks_{name}`.
    pub name: &'static str,
    /// The hash field holding the ring.
    pub field: &'static str,
    pub bucket_ms: i64,
    pub buckets: u32,
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// The counter windows. Each ring is one field of at most 60 bytes, so Redis keeps an entity's
/// hash in its compact (listpack) encoding, which is several times cheaper to write and read
/// than the hashtable a bigger value forces. Changing them changes the stored layout (a new key
/// prefix is the migration).
pub const WINDOWS: [Window; 3] = [
    Window { name: "1h", field: "w1h", bucket_ms: 10 * MINUTE_MS, buckets: 6 },
    Window { name: "1d", field: "w1d", bucket_ms: 4 * HOUR_MS, buckets: 6 },
    Window { name: "7d", field: "w7d", bucket_ms: 24 * HOUR_MS, buckets: 7 },
];

/// A ring's bytes: the newest bucket index, then per slot (impressions, clicks), all
/// little-endian `u32`. Slot `b % buckets` holds bucket `b`, for the `buckets` buckets up to the
/// newest.
pub const fn ring_bytes(window: &Window) -> usize {
    4 + 8 * window.buckets as usize
}

/// Impressions and clicks in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    pub impressions: u64,
    pub clicks: u64,
}

/// Sums a ring as seen at `now_ms`: the buckets of the window ending at `now_ms`. `None` when
/// the value has the wrong length (written by another layout).
pub fn window_counts(window: &Window, ring: &[u8], now_ms: i64) -> Option<WindowCounts> {
    if ring.len() != ring_bytes(window) {
        return None;
    }
    let word = |i: usize| i64::from(u32::from_le_bytes(ring[i * 4..i * 4 + 4].try_into().expect("4 bytes")));
    let n = i64::from(window.buckets);
    let newest = word(0);
    let current = now_ms.div_euclid(window.bucket_ms);
    let mut sum = WindowCounts::default();
    // The ring holds buckets newest-n+1 ..= newest; the window wants current-n+1 ..= current.
    for bucket in (newest - n + 1).max(current - n + 1)..=newest.min(current) {
        let slot = bucket.rem_euclid(n) as usize;
        sum.impressions += word(1 + 2 * slot) as u64;
        sum.clicks += word(2 + 2 * slot) as u64;
    }
    Some(sum)
}

/// Encodes an attribute value for its hash field: a type tag, then the value, so that a number
/// reads back as a number and a string as a string.
pub fn encode_value(value: &RawValue) -> Option<String> {
    match value {
        RawValue::Str(s) => Some(format!("s{s}")),
        RawValue::Num(x) => Some(format!("n{x}")),
        RawValue::Missing => None,
    }
}

/// Decodes an attribute value written by [`encode_value`].
pub fn decode_value(bytes: &[u8]) -> Option<RawValue> {
    let text = std::str::from_utf8(bytes.get(1..)?).ok()?;
    match bytes.first()? {
        b's' => Some(RawValue::from(text)),
        b'n' => text.parse().ok().map(RawValue::Num),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(newest: u32, slots: &[(usize, u32, u32)]) -> Vec<u8> {
        let mut words = [0u32; 1 + 2 * 7];
        words[0] = newest;
        for &(slot, impressions, clicks) in slots {
            words[1 + 2 * slot] = impressions;
            words[2 + 2 * slot] = clicks;
        }
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn windows_count_only_buckets_in_range() {
        let week = &WINDOWS[2];
        let day = 24 * HOUR_MS;
        let today = 20_000u32;
        let now = i64::from(today) * day + 3 * HOUR_MS;
        // Today (slot today % 7) and six days ago: both in the window.
        let counts = ring(today, &[(today as usize % 7, 10, 1), ((today - 6) as usize % 7, 5, 2)]);
        assert_eq!(window_counts(week, &counts, now), Some(WindowCounts { impressions: 15, clicks: 3 }));
        // Two days later, six days ago has left; today is still in.
        assert_eq!(window_counts(week, &counts, now + 2 * day), Some(WindowCounts { impressions: 10, clicks: 1 }));
        // A week later nothing is left.
        assert_eq!(window_counts(week, &counts, now + 7 * day), Some(WindowCounts::default()));
        // Read before the newest bucket (a late read): only buckets up to the read's time.
        assert_eq!(window_counts(week, &counts, now - day), Some(WindowCounts { impressions: 5, clicks: 2 }));
        assert_eq!(window_counts(week, &counts[1..], now), None);
    }

    #[test]
    fn every_ring_fits_redis_compact_hashes() {
        for window in &WINDOWS {
            // hash-max-listpack-value defaults to 64 bytes.
            assert!(ring_bytes(window) <= 64, "{}", window.name);
            assert_eq!(window.bucket_ms % WINDOWS[0].bucket_ms, 0, "{}", window.name);
        }
    }

    #[test]
    fn values_keep_their_type() {
        for value in [RawValue::from("mobile"), RawValue::Num(2.5), RawValue::from(""), RawValue::Num(-0.0)] {
            let encoded = encode_value(&value).unwrap();
            assert_eq!(decode_value(encoded.as_bytes()), Some(value));
        }
        assert_eq!(encode_value(&RawValue::Missing), None);
        assert_eq!(decode_value(b"x1"), None);
        assert_eq!(decode_value(b""), None);
    }

    #[test]
    fn keys() {
        assert_eq!(Entity::Ad.key("adrank:", "a-1"), "adrank:a:a-1");
        assert_eq!(offsets_field("adrank-clicks", 3), "adrank-clicks:3");
    }
}
