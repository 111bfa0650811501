//! How the online store lays entities out in Redis: one hash per entity, shaped for the read
//! path (one `HGETALL` per entity, no per-feature round trips).
//!
//! ```text
//! {prefix}u:{user_id}        a:segment, a:device, …   profile attributes (type-tagged values)
//! {prefix}a:{ad_id}          a:category, a:format, a:advertiser_id, a:status, created_ms
//! {prefix}v:{advertiser_id}  (counters only)
//!   every entity also has:   seen_ms   the newest event time that touched it (read-time TTL)
//!                            counts    windowed impression and click counters (one blob)
//!                            updated_ms the event time of the attributes held (last writer wins)
//! {prefix}ingest:offsets     {topic}:{partition} -> next offset to apply (exactly-once watermark)
//! ```
//!
//! The counters are ring buffers of time buckets, one ring per window in [`WINDOWS`], packed as
//! little-endian `u32` triples `(bucket index, impressions, clicks)` in one field. One field
//! instead of one per bucket keeps a read of 400 entities small (a 7-day window in hourly fields
//! would be hundreds of fields per entity), and the ingester's Lua script updates it atomically.
//! A read sums, per window, the slots whose bucket lies in the window ending at the read's time,
//! so counts age out exactly even for an entity nobody writes any more.

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
        key.push_str(prefix);
        key.push_str(self.tag());
        key.push(':');
        key.push_str(id);
        key
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
pub const COUNTS_FIELD: &str = "counts";
pub const UPDATED_FIELD: &str = "updated_ms";
pub const CREATED_FIELD: &str = "created_ms";
/// Attribute fields carry this prefix, so no attribute name can collide with the fields above.
pub const ATTRIBUTE_PREFIX: &str = "a:";

/// One counter window: `buckets` buckets of `bucket_ms` each, the newest being the bucket that
/// holds the read time. A 7-day window of day buckets counts today and the six days before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The suffix of its features: `user_clicks_{name}`.
    pub name: &'static str,
    pub bucket_ms: i64,
    pub buckets: u32,
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// The counter windows. Changing them changes the stored layout (a new key prefix is the
/// migration): the blob's size and slot order follow this list.
pub const WINDOWS: [Window; 3] = [
    Window { name: "1h", bucket_ms: 5 * MINUTE_MS, buckets: 12 },
    Window { name: "1d", bucket_ms: HOUR_MS, buckets: 24 },
    Window { name: "7d", bucket_ms: 24 * HOUR_MS, buckets: 7 },
];

/// `u32` values per slot: bucket index, impressions, clicks.
pub(crate) const SLOT_WORDS: usize = 3;

/// Slots over all windows.
pub(crate) const fn total_slots() -> usize {
    let mut total = 0;
    let mut i = 0;
    while i < WINDOWS.len() {
        total += WINDOWS[i].buckets as usize;
        i += 1;
    }
    total
}

/// The counters blob's length in bytes.
pub const COUNTS_BYTES: usize = total_slots() * SLOT_WORDS * 4;

/// Impressions and clicks in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    pub impressions: u64,
    pub clicks: u64,
}

/// Sums each window of a counters blob as seen at `now_ms`; `None` when the blob has the wrong
/// length (written by another layout).
pub fn window_counts(blob: &[u8], now_ms: i64) -> Option<[WindowCounts; WINDOWS.len()]> {
    if blob.len() != COUNTS_BYTES {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes(blob[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    let mut sums = [WindowCounts::default(); WINDOWS.len()];
    let mut slot = 0;
    for (window, sum) in WINDOWS.iter().zip(&mut sums) {
        let newest = now_ms.div_euclid(window.bucket_ms);
        let oldest = newest - i64::from(window.buckets) + 1;
        for _ in 0..window.buckets {
            let bucket = i64::from(word(slot * SLOT_WORDS));
            // A zero bucket index is an empty slot (bucket 0 is 1970).
            if bucket != 0 && (oldest..=newest).contains(&bucket) {
                sum.impressions += u64::from(word(slot * SLOT_WORDS + 1));
                sum.clicks += u64::from(word(slot * SLOT_WORDS + 2));
            }
            slot += 1;
        }
    }
    Some(sums)
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

    fn blob(slots: &[(usize, u32, u32, u32)]) -> Vec<u8> {
        let mut words = vec![0u32; total_slots() * SLOT_WORDS];
        for &(slot, bucket, impressions, clicks) in slots {
            words[slot * SLOT_WORDS..slot * SLOT_WORDS + 3].copy_from_slice(&[bucket, impressions, clicks]);
        }
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn windows_count_only_buckets_in_range() {
        let day = 24 * HOUR_MS;
        let now = 20_000 * day + 3 * HOUR_MS;
        let today = 20_000u32;
        // The 7-day ring starts after the 12 + 24 slots of the shorter windows.
        let first_7d = 36;
        let counts = blob(&[
            (first_7d + (today as usize % 7), today, 10, 1),
            (first_7d + ((today - 6) as usize % 7), today - 6, 5, 2),
            // Too old: eight days ago shares no slot index by chance? 8 % 7 == 1, a distinct slot.
            (first_7d + ((today - 8) as usize % 7), today - 8, 100, 100),
        ]);
        let sums = window_counts(&counts, now).unwrap();
        assert_eq!(sums[2], WindowCounts { impressions: 15, clicks: 3 });
        assert_eq!(sums[0], WindowCounts::default());
        // A week later nothing is left.
        assert_eq!(window_counts(&counts, now + 7 * day).unwrap()[2], WindowCounts::default());
        assert_eq!(window_counts(&counts[1..], now), None);
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
        assert_eq!(COUNTS_BYTES, 43 * 12);
    }
}
