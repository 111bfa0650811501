//! How the online store lays entities out in Redis: one record per entity, shaped for the read
//! path (all of a read's entities in one `MGET`, no per-feature round trips).
//!
//! ```text
//! {prefix}u:{user_id}        the user's record: profile attributes and counters
//! {prefix}a:{ad_id}          the ad's record: catalog attributes (category, format,
//!                            advertiser_id, status …), creation time and counters
//! {prefix}v:{advertiser_id}  the advertiser's record: counters only
//! {prefix}h:{user_id}        hash: the user's history, one field per pair, each a record of
//!                            counters only: c:{category} with an ad category, v:{advertiser_id}
//!                            with an advertiser
//! {prefix}ingest:offsets     hash: {topic}:{partition} -> next offset to apply (exactly-once
//!                            watermark)
//! ```
//!
//! A record is one Redis string, little-endian:
//!
//! ```text
//! 0    u8       format (RECORD_FORMAT)
//! 1    u8       flags: which of the four times below are held
//! 2    4 x f64  seen_ms    the newest event time that touched it (read-time TTL)
//!               created_ms an ad's first live catalog record (ad_age_hours)
//!               updated_ms the event time of the attributes held (last writer wins)
//!               expires_ms when Redis deletes the key (wall clock; garbage collection only:
//!                          reads apply the TTL themselves)
//! 34   rings    one per window in WINDOWS: the newest bucket's index, then (impressions,
//!               clicks) per slot, u32s
//! 198  attributes, as the writer encoded them: per attribute a LEB128 length and the name, a
//!               LEB128 length and the type-tagged value (encode_value)
//! ```
//!
//! Why one string and not a hash of fields: a read touches ~400 entities, and on a 2-core
//! machine Redis spent 3.7 µs per ad in `HGETALL` (a command, a key lookup and 11 fields of
//! reply each) against 1.1 µs per record in one `MGET` (BENCHMARKS.md). The ingester's script
//! reads and rewrites a record's header and rings in place (`GETRANGE`, `SETRANGE`) and replaces
//! its attributes whole; only the reader parses attributes.
//!
//! A read sums, per window, the buckets that lie in the window ending at the read's time, so
//! counts age out exactly even for an entity nobody writes any more.

use adrank_contracts::events::RawValue;

/// The kinds of entity the online store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    User,
    Ad,
    Advertiser,
    /// A user and an ad category: a field of the user's history hash ([`history_key`]).
    UserCategory,
    /// A user and an advertiser: likewise.
    UserAdvertiser,
}

/// The hash holding a user's history: one field per pair ([`Entity::write_field`]). One key per
/// user, not per pair: a read names ~220 pairs (a category per distinct category and one per
/// advertiser of 200 candidates), and a key lookup each doubled a read's cost in Redis.
pub fn history_key(prefix: &str, user_id: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + 2 + user_id.len());
    write_history_key(prefix, user_id, &mut key);
    key
}

/// Writes [`history_key`] into `key`, replacing what it held.
pub fn write_history_key(prefix: &str, user_id: &str, key: &mut String) {
    key.clear();
    key.push_str(prefix);
    key.push_str("h:");
    key.push_str(user_id);
}

impl Entity {
    /// The short tag in the entity's Redis key, or in a pair's field.
    fn tag(self) -> &'static str {
        match self {
            Self::User => "u",
            Self::Ad => "a",
            Self::Advertiser => "v",
            Self::UserCategory => "c",
            Self::UserAdvertiser => "v",
        }
    }

    /// The feature holding this entity's id (`user_id`, …); pairs have none (their records
    /// hold counters only, and the ids are the user's and the ad's).
    pub fn id_feature(self) -> Option<&'static str> {
        match self {
            Self::User => Some("user_id"),
            Self::Ad => Some("ad_id"),
            Self::Advertiser => Some("advertiser_id"),
            Self::UserCategory | Self::UserAdvertiser => None,
        }
    }

    /// The prefix of this entity's counter features (`user_clicks_7d`, …).
    pub fn feature_prefix(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Ad => "ad",
            Self::Advertiser => "advertiser",
            Self::UserCategory => "user_category",
            Self::UserAdvertiser => "user_advertiser",
        }
    }

    /// Writes a pair's field in its user's history hash (`c:{category}`, `v:{advertiser_id}`)
    /// into `field`, replacing what it held.
    pub fn write_field(self, other: &str, field: &mut String) {
        debug_assert!(matches!(self, Self::UserCategory | Self::UserAdvertiser), "{self:?} is no pair");
        field.clear();
        field.push_str(self.tag());
        field.push(':');
        field.push_str(other);
    }

    /// The Redis key of one entity (a user, an ad, an advertiser).
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

/// The key marking a click id as counted (apply.lua), so that a retried click counts once.
pub fn click_key(prefix: &str, click_id: &str) -> String {
    format!("{prefix}click:{click_id}")
}

/// The hash holding each partition's applied-offset watermark.
pub fn offsets_key(prefix: &str) -> String {
    format!("{prefix}ingest:offsets")
}

/// The field of one topic partition in the offsets hash.
pub fn offsets_field(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

/// The format byte every record starts with. Changing the layout changes it: the script and the
/// reader refuse records of another format instead of misreading them.
pub const RECORD_FORMAT: u8 = 2;

/// Flag bits: which optional times a record holds.
pub const HAS_SEEN: u8 = 1;
pub const HAS_CREATED: u8 = 2;
pub const HAS_UPDATED: u8 = 4;
pub const HAS_EXPIRES: u8 = 8;

/// Format, flags and the four times.
pub const HEADER_BYTES: usize = 2 + 4 * 8;

/// Where the attributes start: after the header and every ring.
pub const RINGS_END: usize = {
    let mut end = HEADER_BYTES;
    let mut i = 0;
    while i < WINDOWS.len() {
        end += ring_bytes(&WINDOWS[i]);
        i += 1;
    }
    end
};

/// One counter window: a ring of `buckets` buckets of `bucket_ms` each, the newest being the
/// bucket that holds the read time. A 7-day window of day buckets counts today and the six
/// days before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The suffix of its features: `user_clicks_{name}`.
    pub name: &'static str,
    pub bucket_ms: i64,
    pub buckets: u32,
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// The counter windows, in the order of their rings in a record. Changing them changes the
/// stored layout (and must change [`RECORD_FORMAT`]).
pub const WINDOWS: [Window; 3] = [
    Window { name: "1h", bucket_ms: 10 * MINUTE_MS, buckets: 6 },
    Window { name: "1d", bucket_ms: 4 * HOUR_MS, buckets: 6 },
    Window { name: "7d", bucket_ms: 24 * HOUR_MS, buckets: 7 },
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

/// One entity's record, parsed in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record<'a> {
    pub seen_ms: Option<i64>,
    pub created_ms: Option<i64>,
    pub updated_ms: Option<i64>,
    pub expires_ms: Option<i64>,
    /// Every ring, in the order of [`WINDOWS`]: see [`ring`].
    pub rings: &'a [u8],
    /// The encoded attributes: see [`Record::attributes`].
    pub encoded_attributes: &'a [u8],
}

/// Why bytes are not a record of this layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than a header and the rings.
    TooShort(usize),
    /// Another format byte: written by another layout.
    Format(u8),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooShort(n) => write!(f, "{n} bytes, shorter than a record's {RINGS_END}"),
            Self::Format(format) => write!(f, "format {format}, not this layout's {RECORD_FORMAT}"),
        }
    }
}

impl<'a> Record<'a> {
    pub fn parse(bytes: &'a [u8]) -> std::result::Result<Self, RecordError> {
        if bytes.len() < RINGS_END {
            return Err(RecordError::TooShort(bytes.len()));
        }
        if bytes[0] != RECORD_FORMAT {
            return Err(RecordError::Format(bytes[0]));
        }
        let flags = bytes[1];
        // Event times are validated to lie in years 0-9999: exact in an f64, and the cast
        // saturates whatever else a corrupt record holds.
        let time = |i: usize, flag: u8| {
            let at = 2 + 8 * i;
            let value = f64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            (flags & flag != 0).then_some(value as i64)
        };
        Ok(Self {
            seen_ms: time(0, HAS_SEEN),
            created_ms: time(1, HAS_CREATED),
            updated_ms: time(2, HAS_UPDATED),
            expires_ms: time(3, HAS_EXPIRES),
            rings: &bytes[HEADER_BYTES..RINGS_END],
            encoded_attributes: &bytes[RINGS_END..],
        })
    }

    /// The attributes: (name, type-tagged value) pairs. A truncated or garbled tail ends the
    /// iteration (the reader's records are written by the script, byte for byte as encoded).
    pub fn attributes(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + use<'a> {
        let mut rest = self.encoded_attributes;
        std::iter::from_fn(move || {
            let name = take(&mut rest)?;
            let value = take(&mut rest)?;
            Some((name, value))
        })
    }
}

/// Window `w`'s ring (`w` indexes [`WINDOWS`]) in a record's `rings`.
pub fn ring(rings: &[u8], w: usize) -> &[u8] {
    let start: usize = WINDOWS[..w].iter().map(ring_bytes).sum();
    &rings[start..start + ring_bytes(&WINDOWS[w])]
}

/// Takes a LEB128 length and that many bytes off the front of `bytes`.
fn take<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut length = 0usize;
    let mut shift = 0;
    loop {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        length |= usize::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift >= usize::BITS {
            return None;
        }
    }
    let (taken, rest) = bytes.split_at_checked(length)?;
    *bytes = rest;
    Some(taken)
}

/// Appends a LEB128 length and `bytes`.
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut n = bytes.len();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(bytes);
}

/// Encodes attributes as a record holds them: (name, value) pairs; missing values are left out.
pub fn encode_attributes<'a>(attributes: impl IntoIterator<Item = (&'a str, &'a RawValue)>, out: &mut Vec<u8>) {
    for (name, value) in attributes {
        if let Some(value) = encode_value(value) {
            put(out, name.as_bytes());
            put(out, value.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(newest: u32, slots: &[(usize, u32, u32)]) -> Vec<u8> {
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
        let counts = ring_of(today, &[(today as usize % 7, 10, 1), ((today - 6) as usize % 7, 5, 2)]);
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
    fn windows_nest_in_the_finest_bucket() {
        for window in &WINDOWS {
            assert_eq!(window.bucket_ms % WINDOWS[0].bucket_ms, 0, "{}", window.name);
        }
        assert_eq!(RINGS_END, 198);
    }

    /// A record as the script writes it.
    fn record(flags: u8, times: [f64; 4], rings: &[u8], attributes: &[(&str, RawValue)]) -> Vec<u8> {
        let mut bytes = vec![RECORD_FORMAT, flags];
        for t in times {
            bytes.extend(t.to_le_bytes());
        }
        bytes.extend(rings);
        encode_attributes(attributes.iter().map(|(n, v)| (*n, v)), &mut bytes);
        bytes
    }

    #[test]
    fn records_parse_in_place() {
        let mut rings = vec![0u8; RINGS_END - HEADER_BYTES];
        rings[52] = 7; // the 1d ring's newest bucket
        let attributes =
            [("category", RawValue::from("shoes")), ("price", RawValue::Num(2.5)), ("gone", RawValue::Missing)];
        let bytes = record(HAS_SEEN | HAS_CREATED, [1_000.0, 500.0, 9.0, 9.0], &rings, &attributes);
        let parsed = Record::parse(&bytes).unwrap();
        assert_eq!(
            (parsed.seen_ms, parsed.created_ms, parsed.updated_ms, parsed.expires_ms),
            (Some(1_000), Some(500), None, None)
        );
        assert_eq!(ring(parsed.rings, 1)[0], 7);
        assert_eq!(ring(parsed.rings, 2).len(), ring_bytes(&WINDOWS[2]));
        let read: Vec<_> = parsed.attributes().map(|(n, v)| (n, decode_value(v).unwrap())).collect();
        assert_eq!(read, [(&b"category"[..], RawValue::from("shoes")), (&b"price"[..], RawValue::Num(2.5))]);

        // A long name and value need more than one length byte.
        let long = "x".repeat(300);
        let bytes = record(HAS_SEEN, [0.0; 4], &rings, &[(long.as_str(), RawValue::from(long.as_str()))]);
        let (name, value) = Record::parse(&bytes).unwrap().attributes().next().unwrap();
        assert_eq!((name.len(), value.len()), (300, 301));

        // Cut anywhere in the attributes: the whole pairs before the cut, no panic.
        let bytes = record(HAS_SEEN, [0.0; 4], &rings, &attributes);
        for cut in RINGS_END..bytes.len() {
            let pairs = Record::parse(&bytes[..cut]).unwrap().attributes().count();
            assert!(pairs < 2, "cut at {cut}: {pairs}");
        }
        assert_eq!(Record::parse(&bytes[..RINGS_END - 1]), Err(RecordError::TooShort(RINGS_END - 1)));
        let mut other = bytes.clone();
        other[0] = 1;
        assert_eq!(Record::parse(&other), Err(RecordError::Format(1)));
        // A length that claims more than usize holds.
        let mut garbled = bytes[..RINGS_END].to_vec();
        garbled.extend([0xff; 12]);
        assert_eq!(Record::parse(&garbled).unwrap().attributes().count(), 0);
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
        assert_eq!(history_key("adrank:", "u-1"), "adrank:h:u-1");
        let mut field = String::new();
        Entity::UserCategory.write_field("shoes", &mut field);
        assert_eq!(field, "c:shoes");
        Entity::UserAdvertiser.write_field("v-2", &mut field);
        assert_eq!(field, "v:v-2");
        assert_eq!(offsets_field("adrank-clicks", 3), "adrank-clicks:3");
    }
}
