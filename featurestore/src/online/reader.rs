//! The online read client serving uses: one user and up to [`MAX_ADS`] ads with their
//! advertisers in one pipelined round trip, with an optional short-lived in-process cache for
//! ads and advertisers.
//!
//! The answer is raw features named as the feature spec reads them: the stored attributes
//! (`segment`, `category`, …), the windowed counters (`user_clicks_7d`, `ad_impressions_1h`, …),
//! `ad_age_hours` and the ids. An entity that is absent, or that no event has touched for the
//! entity TTL (in event time, against the read's time), contributes only its id: the transforms
//! then apply the spec's defaults, and the read counts it as missing. Expiry is applied on
//! every read, so a hash Redis has not deleted yet never shows a stale value.

use std::{
    borrow::Cow,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

// Keys here are short ids hashed per candidate per request, inside the process: SipHash's
// protection against chosen collisions costs more than it buys (it was 6% of serving's CPU).
use rustc_hash::FxHashMap;

use super::{
    layout::{self, ATTRIBUTE_PREFIX, CREATED_FIELD, Entity, SEEN_FIELD, WINDOWS},
    resp::{self, Pool},
};
use crate::{
    Error, RedisConfig, Result,
    events::{RawFeatures, RawValue},
    metrics,
    spec::{FeatureSpec, Source},
};

/// The most ads one read may ask for.
pub const MAX_ADS: usize = 1_000;

const HOUR_MS: f64 = 3_600_000.0;

/// An ad to read, with its advertiser.
#[derive(Debug, Clone, Copy)]
pub struct AdRef<'a> {
    pub ad_id: &'a str,
    pub advertiser_id: &'a str,
}

/// Entities a read found missing (absent or expired), by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Missing {
    pub users: usize,
    pub ads: usize,
    pub advertisers: usize,
}

/// What one read returns.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The user's features.
    pub user: RawFeatures,
    /// Per requested ad, in order: the ad's and its advertiser's features.
    pub ads: Vec<AdFeatures>,
    pub missing: Missing,
    /// Ad and advertiser hashes served from the in-process cache.
    pub cache_hits: usize,
}

/// One candidate's stored features: its ad's and its advertiser's, each shared by every
/// candidate (and, while the counters' buckets stay the same, every request) that names the
/// same entity, and the ad's age, which changes with every read.
#[derive(Debug, Clone, PartialEq)]
pub struct AdFeatures {
    /// The ad's id, attributes and counters (only the id when it is missing or expired).
    pub ad: Arc<RawFeatures>,
    /// The advertiser's, likewise.
    pub advertiser: Arc<RawFeatures>,
    /// `ad_age_hours` at the read's time (`Missing` when the ad is missing or has no creation time).
    pub ad_age_hours: RawValue,
}

impl Fetched {
    /// What serving uses when the store cannot be read in time: every entity known only by
    /// its id, so the transforms apply the spec's defaults to everything else.
    pub fn ids_only(user_id: &str, ads: &[AdRef<'_>]) -> Self {
        Self {
            user: id_record(Entity::User, user_id),
            ads: ads
                .iter()
                .map(|ad| AdFeatures {
                    ad: Arc::new(id_record(Entity::Ad, ad.ad_id)),
                    advertiser: Arc::new(id_record(Entity::Advertiser, ad.advertiser_id)),
                    ad_age_hours: RawValue::Missing,
                })
                .collect(),
            ..Self::default()
        }
    }
}

/// What a missing entity contributes: its id alone.
fn id_record(entity: Entity, id: &str) -> RawFeatures {
    RawFeatures::from_iter([(Cow::Borrowed(entity.id_feature()), RawValue::from(id))])
}

impl Default for AdFeatures {
    fn default() -> Self {
        Self { ad: Arc::default(), advertiser: Arc::default(), ad_age_hours: RawValue::Missing }
    }
}

impl AdFeatures {
    /// The age feature's name.
    pub const AGE: &'static str = "ad_age_hours";

    /// Everything as one record, the advertiser's values winning over the ad's where names
    /// repeat: what an impression logs.
    pub fn record(&self) -> RawFeatures {
        let mut record = (*self.ad).clone();
        record.merge(&self.advertiser);
        if self.ad_age_hours != RawValue::Missing {
            record.insert(Self::AGE, self.ad_age_hours.clone());
        }
        record
    }
}

/// One entity's hash as read.
#[derive(Debug, Default)]
struct Stored {
    seen_ms: Option<i64>,
    created_ms: Option<i64>,
    attributes: Vec<(Cow<'static, str>, RawValue)>,
    /// The counter rings, in the order of [`WINDOWS`].
    rings: [Option<Vec<u8>>; WINDOWS.len()],
    /// The entity's features as last computed, with the counter bucket they hold for: a cached
    /// entity is read by many requests, and its counters change only when the read time crosses
    /// into another bucket.
    features: Mutex<Option<(i64, Arc<RawFeatures>)>>,
}

impl Stored {
    /// Parses an `HGETALL` reply: field, value, field, value, …; keeps only the `wanted`
    /// attributes when given (under their shared names, with no allocation), else all.
    fn parse<'a>(mut reply: impl Iterator<Item = Option<&'a [u8]>>, wanted: Option<&[&'static str]>) -> Self {
        let mut stored = Self::default();
        while let (Some(Some(field)), Some(Some(value))) = (reply.next(), reply.next()) {
            let number = || std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            match field {
                f if f == SEEN_FIELD.as_bytes() => stored.seen_ms = number(),
                f if f == CREATED_FIELD.as_bytes() => stored.created_ms = number(),
                f if let Some(w) = WINDOWS.iter().position(|w| w.field.as_bytes() == f) => {
                    stored.rings[w] = Some(value.to_vec())
                }
                f => {
                    let Some(name) = f.strip_prefix(ATTRIBUTE_PREFIX.as_bytes()) else { continue };
                    let name = match wanted {
                        Some(names) => match names.iter().find(|n| n.as_bytes() == name) {
                            Some(n) => Cow::Borrowed(*n),
                            None => continue,
                        },
                        None => match std::str::from_utf8(name) {
                            Ok(name) => Cow::Owned(name.to_string()),
                            Err(_) => continue,
                        },
                    };
                    if let Some(value) = layout::decode_value(value) {
                        stored.attributes.push((name, value));
                    }
                }
            }
        }
        stored
    }

    /// Whether the entity counts as present at `now_ms`.
    fn live(&self, now_ms: i64, ttl_ms: i64) -> bool {
        self.seen_ms.is_some_and(|seen| now_ms.saturating_sub(seen) <= ttl_ms)
    }

    /// Appends this entity's attributes and counters at `now_ms` to `out` (unsorted: the
    /// record is sorted once, when complete).
    fn features(&self, entity: Entity, now_ms: i64, out: &mut Vec<(Cow<'static, str>, RawValue)>) {
        out.extend(self.attributes.iter().cloned());
        let names = counter_names(entity);
        for ((window, ring), (clicks, impressions)) in WINDOWS.iter().zip(&self.rings).zip(names) {
            // No ring yet (an entity known only from its profile): zero counts.
            let sum = ring.as_deref().and_then(|ring| layout::window_counts(window, ring, now_ms)).unwrap_or_default();
            out.push((Cow::Borrowed(*clicks), RawValue::Num(sum.clicks as f64)));
            out.push((Cow::Borrowed(*impressions), RawValue::Num(sum.impressions as f64)));
        }
    }

    /// The entity's id, attributes and counters at `now_ms`, as a record: computed once per
    /// counter bucket and shared.
    fn record(&self, entity: Entity, id: &str, now_ms: i64) -> Arc<RawFeatures> {
        // Every window's buckets are whole multiples of the finest one, so the finest bucket
        // holding `now_ms` fixes every window's sum.
        let bucket = now_ms.div_euclid(FINEST_BUCKET_MS);
        let mut memo = self.features.lock().expect("the features lock is never poisoned: nothing panics holding it");
        if let Some((at, record)) = &*memo
            && *at == bucket
        {
            return record.clone();
        }
        let mut entries = Vec::with_capacity(1 + self.attributes.len() + 2 * WINDOWS.len());
        entries.push((Cow::Borrowed(entity.id_feature()), RawValue::from(id)));
        self.features(entity, now_ms, &mut entries);
        let record = Arc::new(RawFeatures::from_iter(entries));
        *memo = Some((bucket, record.clone()));
        record
    }

    /// The ad's age in hours at `now_ms`.
    fn age_hours(&self, now_ms: i64) -> RawValue {
        self.created_ms
            .map_or(RawValue::Missing, |created| RawValue::Num(((now_ms - created) as f64 / HOUR_MS).max(0.0)))
    }
}

/// The finest counter bucket.
const FINEST_BUCKET_MS: i64 = {
    let mut finest = WINDOWS[0].bucket_ms;
    let mut i = 1;
    while i < WINDOWS.len() {
        assert!(WINDOWS[i].bucket_ms % finest == 0, "every window's bucket must be a multiple of the finest");
        if WINDOWS[i].bucket_ms < finest {
            finest = WINDOWS[i].bucket_ms;
        }
        i += 1;
    }
    finest
};

/// `(clicks, impressions)` feature names per window, made once: reads would otherwise format
/// six names per entity.
fn counter_names(entity: Entity) -> &'static [(&'static str, &'static str)] {
    static NAMES: OnceLock<[Vec<(&'static str, &'static str)>; 3]> = OnceLock::new();
    let all = NAMES.get_or_init(|| {
        [Entity::User, Entity::Ad, Entity::Advertiser].map(|entity| {
            let prefix = entity.feature_prefix();
            let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
            WINDOWS
                .iter()
                .map(|w| {
                    (leak(format!("{prefix}_clicks_{}", w.name)), leak(format!("{prefix}_impressions_{}", w.name)))
                })
                .collect()
        })
    });
    &all[entity as usize]
}

/// The attributes a reader keeps per entity kind (users, ads, advertisers), when it knows
/// them: each read then skips the others, and names the kept ones without an allocation.
/// [`Wanted::from_spec`] takes them from the feature spec.
///
/// The read still asks for whole hashes (`HGETALL`): asking for only these fields (`HMGET`) cost
/// Redis more per entity (an argument object and a listpack scan per field asked for) than
/// sending the few fields more, once the client parsed replies in place (`bench ingest`).
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    per_entity: [Vec<&'static str>; 3],
}

impl Wanted {
    /// The stored attributes the spec's user, ad and advertiser features read (not the ids,
    /// counters or `ad_age_hours`, which every read provides).
    pub fn from_spec(spec: &FeatureSpec) -> Self {
        let provided = |name: &str| {
            [Entity::User, Entity::Ad, Entity::Advertiser].iter().any(|e| e.id_feature() == name)
                || name == AdFeatures::AGE
                || WINDOWS.iter().any(|w| {
                    ["user", "ad", "advertiser"].iter().any(|p| {
                        name == format!("{p}_clicks_{}", w.name) || name == format!("{p}_impressions_{}", w.name)
                    })
                })
        };
        let mut names: [Vec<String>; 3] = Default::default();
        for feature in &spec.features {
            let entity = match feature.source {
                Source::User => 0,
                Source::Ad => 1,
                Source::Advertiser => 2,
                _ => continue,
            };
            let inputs = [Some(feature.input_name()), feature.clicks.as_deref(), feature.impressions.as_deref()];
            for input in inputs.into_iter().flatten() {
                if !provided(input) && !names[entity].iter().any(|n| n == input) {
                    names[entity].push(input.to_string());
                }
            }
        }
        Self::new(names)
    }

    /// The attribute names per kind: users, ads, advertisers.
    pub fn new(names: [Vec<String>; 3]) -> Self {
        // Attribute names are few and live as long as the process: leaked once, they go into
        // every read's features without an allocation.
        let per_entity = names.map(|n| n.into_iter().map(|s| &*Box::leak(s.into_boxed_str())).collect());
        Self { per_entity }
    }
}

/// A short-lived cache of ad and advertiser hashes (including absent ones), by kind and id: a
/// lookup neither formats the Redis key nor allocates.
///
/// An entry is served for `ttl` after it was read, never longer. Past half of that, the read
/// that finds it still uses it but starts a refresh in the background (refresh-ahead): a hot
/// entity is then read again before it expires, instead of every entity cached in the same
/// second expiring together and one request paying for reading them all again.
#[derive(Debug)]
struct Cache {
    ttl: Duration,
    capacity: usize,
    /// Ads, then advertisers.
    entries: Mutex<[Entries; 2]>,
}

/// One cached hash.
#[derive(Debug)]
struct Entry {
    read_at: Instant,
    stored: Arc<Stored>,
    /// A background refresh of it is under way.
    refreshing: bool,
}

/// One kind's cached hashes by id.
type Entries = FxHashMap<Box<str>, Entry>;

impl Cache {
    /// Where `entity`'s entries live; users are never cached.
    fn kind(entity: Entity) -> usize {
        usize::from(entity == Entity::Advertiser)
    }

    /// The cached hashes of `ids` (`None`: not cached or expired), and the positions of those
    /// due for a refresh, now marked as being refreshed.
    fn get(&self, ids: &[(Entity, &str)], now: Instant) -> (Vec<Option<Arc<Stored>>>, Vec<usize>) {
        let mut entries = self.entries.lock().expect("the cache lock is never poisoned: no panics while held");
        let mut due = Vec::new();
        let found = ids
            .iter()
            .enumerate()
            .map(|(i, &(entity, id))| {
                let entry = entries[Self::kind(entity)].get_mut(id)?;
                let age = now.saturating_duration_since(entry.read_at);
                if age >= self.ttl {
                    return None;
                }
                if age >= self.ttl / 2 && !entry.refreshing {
                    entry.refreshing = true;
                    due.push(i);
                }
                Some(entry.stored.clone())
            })
            .collect();
        (found, due)
    }

    fn put<'a>(&self, fresh: impl IntoIterator<Item = ((Entity, &'a str), Arc<Stored>)>, read_at: Instant) {
        let mut entries = self.entries.lock().expect("the cache lock is never poisoned: no panics while held");
        for ((entity, id), stored) in fresh {
            let map = &mut entries[Self::kind(entity)];
            if map.len() >= self.capacity / 2 && !map.contains_key(id) {
                map.retain(|_, entry| read_at.saturating_duration_since(entry.read_at) < self.ttl);
                if map.len() >= self.capacity / 2 {
                    // Everything is fresh and the cache is full: start over rather than grow.
                    map.clear();
                }
            }
            map.insert(id.into(), Entry { read_at, stored, refreshing: false });
        }
    }

    /// A refresh failed: a later read may start another.
    fn refresh_failed(&self, ids: &[(Entity, Box<str>)]) {
        let mut entries = self.entries.lock().expect("the cache lock is never poisoned: no panics while held");
        for (entity, id) in ids {
            if let Some(entry) = entries[Self::kind(*entity)].get_mut(&**id) {
                entry.refreshing = false;
            }
        }
    }
}

/// Reads features from the online store.
#[derive(Debug, Clone)]
pub struct Reader {
    pool: Arc<Pool>,
    prefix: String,
    ttl_ms: i64,
    cache: Option<Arc<Cache>>,
    wanted: Option<Arc<Wanted>>,
}

impl Reader {
    /// Connects; the cache follows `cache_ttl_ms` (0: none).
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        let pool = Arc::new(Pool::connect(config).await?);
        let cache = (config.cache_ttl_ms > 0 && config.cache_entries > 0).then(|| {
            Arc::new(Cache {
                ttl: Duration::from_millis(config.cache_ttl_ms),
                capacity: config.cache_entries,
                entries: Mutex::default(),
            })
        });
        Ok(Self { pool, prefix: config.key_prefix.clone(), ttl_ms: config.entity_ttl_ms(), cache, wanted: None })
    }

    /// Reads only these attributes (and the counters, ids and ad age) instead of whole hashes.
    pub fn with_wanted(mut self, wanted: Wanted) -> Self {
        self.wanted = Some(Arc::new(wanted));
        self
    }

    /// Reads one user and `ads` (with their advertisers) as of `now_ms`, in one round trip for
    /// whatever the cache does not hold.
    pub async fn fetch(&self, user_id: &str, ads: &[AdRef<'_>], now_ms: i64) -> Result<Fetched> {
        if ads.len() > MAX_ADS {
            return Err(Error::TooManyAds { asked: ads.len(), max: MAX_ADS });
        }
        // Entities: the user, then each distinct ad and advertiser once.
        let mut index: FxHashMap<(Entity, &str), usize> = FxHashMap::default();
        index.reserve(ads.len() * 2);
        let mut entities = vec![(Entity::User, user_id)];
        let mut slot = |entity: Entity, id| {
            *index.entry((entity, id)).or_insert_with(|| {
                entities.push((entity, id));
                entities.len() - 1
            })
        };
        let slots: Vec<(usize, usize)> =
            ads.iter().map(|ad| (slot(Entity::Ad, ad.ad_id), slot(Entity::Advertiser, ad.advertiser_id))).collect();
        let now = Instant::now();
        let mut stored: Vec<Option<Arc<Stored>>> = match &self.cache {
            Some(cache) => {
                let (found, due) = cache.get(&entities[1..], now);
                if !due.is_empty() {
                    let due = due.iter().map(|&i| (entities[1 + i].0, Box::from(entities[1 + i].1))).collect();
                    tokio::spawn(self.clone().refresh(due));
                }
                std::iter::once(None).chain(found).collect()
            }
            None => vec![None; entities.len()],
        };
        let cache_hits = stored.iter().filter(|s| s.is_some()).count();
        let wanted: Vec<usize> = (0..entities.len()).filter(|&i| stored[i].is_none()).collect();
        let read = self.read(wanted.iter().map(|&i| entities[i])).await?;
        for (&i, parsed) in wanted.iter().zip(read) {
            stored[i] = Some(Arc::new(parsed));
        }
        if let Some(cache) = &self.cache {
            cache.put(wanted.iter().filter(|&&i| i > 0).map(|&i| (entities[i], stored[i].clone().expect("read"))), now);
        }
        if self.cache.is_some() {
            // The user is never cached, so it is no miss.
            metrics::online_cache(cache_hits, wanted.len().saturating_sub(1));
        }

        let held = |i: usize| stored[i].as_deref().expect("every key was read or cached");
        let live: Vec<bool> = (0..entities.len()).map(|i| held(i).live(now_ms, self.ttl_ms)).collect();
        // Distinct ads and advertisers count once, however many candidates share them.
        let mut missing = Missing { users: usize::from(!live[0]), ..Missing::default() };
        for (i, &(entity, _)) in entities.iter().enumerate().skip(1) {
            if !live[i] {
                match entity {
                    Entity::Ad => missing.ads += 1,
                    Entity::Advertiser => missing.advertisers += 1,
                    Entity::User => missing.users += 1,
                }
            }
        }
        // Each distinct entity's record once: a missing or expired one holds only its id.
        let records: Vec<Arc<RawFeatures>> = entities
            .iter()
            .enumerate()
            .map(
                |(i, &(entity, id))| {
                    if live[i] { held(i).record(entity, id, now_ms) } else { Arc::new(id_record(entity, id)) }
                },
            )
            .collect();
        let user = (*records[0]).clone();
        let per_ad = slots
            .iter()
            .map(|&(ad, advertiser)| AdFeatures {
                ad: records[ad].clone(),
                advertiser: records[advertiser].clone(),
                ad_age_hours: if live[ad] { held(ad).age_hours(now_ms) } else { RawValue::Missing },
            })
            .collect();
        metrics::online_missing(missing);
        Ok(Fetched { user, ads: per_ad, missing, cache_hits })
    }

    /// Reads these entities' hashes in one pipelined round trip.
    async fn read<'a>(&self, entities: impl Iterator<Item = (Entity, &'a str)> + Clone) -> Result<Vec<Stored>> {
        let mut commands = Vec::new();
        let mut key = String::new();
        let mut count = 0;
        for (entity, id) in entities.clone() {
            entity.write_key(&self.prefix, id, &mut key);
            resp::command(&mut commands, [b"HGETALL".as_slice(), key.as_bytes()]);
            count += 1;
        }
        self.pool
            .exchange(&commands, count, |replies| {
                entities
                    .enumerate()
                    .map(|(i, (entity, _))| {
                        let wanted = self.wanted.as_ref().map(|w| w.per_entity[entity as usize].as_slice());
                        Stored::parse(replies.reply(i), wanted)
                    })
                    .collect()
            })
            .await
    }

    /// Reads cached entities again, off the request path (see [`Cache`]).
    async fn refresh(self, due: Vec<(Entity, Box<str>)>) {
        let Some(cache) = &self.cache else { return };
        let read_at = Instant::now();
        match self.read(due.iter().map(|(entity, id)| (*entity, &**id))).await {
            Ok(read) => cache.put(due.iter().map(|(e, id)| (*e, &**id)).zip(read.into_iter().map(Arc::new)), read_at),
            Err(e) => {
                tracing::debug!(error = %e, entities = due.len(), "refreshing cached entities failed");
                cache.refresh_failed(&due);
            }
        }
    }
}
