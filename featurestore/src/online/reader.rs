//! The online read client serving uses: one user and up to [`MAX_ADS`] ads with their
//! advertisers in one round trip (one `MGET`), with an optional short-lived in-process cache for
//! ads and advertisers.
//!
//! The answer is raw features named as the feature spec reads them: the stored attributes
//! (`segment`, `category`, …), the windowed counters (`user_clicks_7d`, `ad_impressions_1h`, …),
//! `ad_age_hours` and the ids. An entity that is absent, or that no event has touched for the
//! entity TTL (in event time, against the read's time), contributes only its id: the transforms
//! then apply the spec's defaults, and the read counts it as missing. Expiry is applied on
//! every read, so a record Redis has not deleted yet never shows a stale value.

use std::{
    borrow::Cow,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

// Keys here are short ids hashed per candidate per request, inside the process: SipHash's
// protection against chosen collisions costs more than it buys (it was 6% of serving's CPU).
use rustc_hash::FxHashMap;

use super::{
    layout::{self, Entity, Record, WINDOWS},
    resp::{self, Pool},
};
use crate::{Error, RedisConfig, Result, metrics};
use adrank_contracts::{
    events::{CATEGORY_FIELD, RawFeatures, RawValue},
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
    /// Ad and advertiser records served from the in-process cache.
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
    /// The user's history with the ad's category and with its advertiser: the pairs' counters
    /// (zero where the pair has none, or the read reads no history; empty when the store could
    /// not be read).
    pub history: [Arc<RawFeatures>; 2],
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
                    ..AdFeatures::default()
                })
                .collect(),
            ..Self::default()
        }
    }
}

/// What a missing entity contributes: its id alone; a pair (which has no id feature), zero
/// counts (no history).
fn id_record(entity: Entity, id: &str) -> RawFeatures {
    match entity.id_feature() {
        Some(name) => RawFeatures::from_iter([(Cow::Borrowed(name), RawValue::from(id))]),
        None => RawFeatures::from_iter(counter_names(entity).iter().map(|&n| (Cow::Borrowed(n), RawValue::Num(0.0)))),
    }
}

impl Default for AdFeatures {
    fn default() -> Self {
        Self {
            ad: Arc::default(),
            advertiser: Arc::default(),
            ad_age_hours: RawValue::Missing,
            history: Default::default(),
        }
    }
}

impl AdFeatures {
    /// The age feature's name.
    pub const AGE: &'static str = "ad_age_hours";

    /// Everything as one record, the advertiser's values winning over the ad's where names
    /// repeat, with the history counters: what an impression logs.
    pub fn record(&self) -> RawFeatures {
        let mut record = (*self.ad).clone();
        record.merge(&self.advertiser);
        for history in &self.history {
            record.merge(history);
        }
        if self.ad_age_hours != RawValue::Missing {
            record.insert(Self::AGE, self.ad_age_hours.clone());
        }
        record
    }
}

/// One entity's record as read.
#[derive(Debug)]
struct Stored {
    seen_ms: Option<i64>,
    created_ms: Option<i64>,
    attributes: Attributes,
    /// The counter rings, in the order of [`WINDOWS`] (held here: no allocation per entity).
    rings: [u8; RINGS],
    /// The entity's features as last computed, with the counter bucket they hold for: a cached
    /// entity is read by many requests, and its counters change only when the read time crosses
    /// into another bucket.
    features: Mutex<Option<(i64, Arc<RawFeatures>)>>,
}

/// The bytes of every ring of a record.
const RINGS: usize = layout::RINGS_END - layout::HEADER_BYTES;

/// An entity's stored attributes.
#[derive(Debug)]
enum Attributes {
    /// Every one, by name.
    All(Vec<(Cow<'static, str>, RawValue)>),
    /// The wanted ones, by their place in the kind's [`Plan::names`].
    Wanted(Vec<Option<RawValue>>),
}

impl Default for Stored {
    /// An absent entity.
    fn default() -> Self {
        Self {
            seen_ms: None,
            created_ms: None,
            attributes: Attributes::All(Vec::new()),
            rings: [0; RINGS],
            features: Mutex::default(),
        }
    }
}

impl Stored {
    /// Parses a record (`None`: absent); keeps only the attributes `plan` names when given
    /// (by place, with no allocation), else all. A value that is not a record of this layout
    /// reads as absent: the entity counts as missing.
    fn parse(value: Option<&[u8]>, plan: Option<&Plan>) -> Self {
        let Some(value) = value else { return Self::default() };
        let record = match Record::parse(value) {
            Ok(record) => record,
            Err(e) => {
                tracing::debug!(error = %e, "an online-store value is not a record: read as missing");
                return Self::default();
            }
        };
        let attributes = match plan {
            Some(plan) => {
                let mut values = vec![None; plan.names.len()];
                for (name, value) in record.attributes() {
                    if let Some(j) = plan.names.iter().position(|n| n.as_bytes() == name) {
                        values[j] = layout::decode_value(value);
                    }
                }
                Attributes::Wanted(values)
            }
            None => Attributes::All(
                record
                    .attributes()
                    .filter_map(|(name, value)| {
                        Some((Cow::Owned(std::str::from_utf8(name).ok()?.to_string()), layout::decode_value(value)?))
                    })
                    .collect(),
            ),
        };
        Self {
            seen_ms: record.seen_ms,
            created_ms: record.created_ms,
            attributes,
            rings: record.rings.try_into().expect("a record's rings are RINGS bytes"),
            features: Mutex::default(),
        }
    }

    /// A stored attribute by name, as its record was parsed with `plan`.
    fn attribute(&self, name: &str, plan: Option<&Plan>) -> Option<&RawValue> {
        match (&self.attributes, plan) {
            (Attributes::All(all), _) => all.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            (Attributes::Wanted(values), Some(plan)) => {
                values.get(plan.names.iter().position(|n| *n == name)?)?.as_ref()
            }
            (Attributes::Wanted(_), None) => None,
        }
    }

    /// Whether the entity counts as present at `now_ms`.
    fn live(&self, now_ms: i64, ttl_ms: i64) -> bool {
        self.seen_ms.is_some_and(|seen| now_ms.saturating_sub(seen) <= ttl_ms)
    }

    /// Clicks and impressions per window at `now_ms`, in the order of [`counter_names`].
    fn counts(&self, now_ms: i64) -> [f64; COUNTERS] {
        let mut counts = [0.0; COUNTERS];
        for (w, window) in WINDOWS.iter().enumerate() {
            // No counts yet (an all-zero ring): zero counts.
            let sum = layout::window_counts(window, layout::ring(&self.rings, w), now_ms).unwrap_or_default();
            counts[2 * w] = sum.clicks as f64;
            counts[2 * w + 1] = sum.impressions as f64;
        }
        counts
    }

    /// The entity's id, attributes and counters at `now_ms`, as a record: computed once per
    /// counter bucket and shared. `plan` is the one the record was parsed with.
    fn record(&self, entity: Entity, id: &str, now_ms: i64, plan: Option<&Plan>) -> Arc<RawFeatures> {
        // Every window's buckets are whole multiples of the finest one, so the finest bucket
        // holding `now_ms` fixes every window's sum.
        let bucket = now_ms.div_euclid(FINEST_BUCKET_MS);
        let mut memo = self.features.lock().expect("the features lock is never poisoned: nothing panics holding it");
        if let Some((at, record)) = &*memo
            && *at == bucket
        {
            return record.clone();
        }
        let counts = self.counts(now_ms);
        let record = Arc::new(match (&self.attributes, plan) {
            // Names in the plan's precomputed order: no sorting, no name comparisons.
            (Attributes::Wanted(values), Some(plan)) => {
                // Sized once: grown as it fills (a `filter_map` collect), the vector was copied
                // twice per entity.
                let mut entries = Vec::with_capacity(plan.order.len());
                for &(name, from) in &plan.order {
                    let value = match from {
                        Origin::Id => RawValue::from(id),
                        Origin::Attribute(j) => match values.get(j) {
                            Some(Some(value)) => value.clone(),
                            _ => continue,
                        },
                        Origin::Counter(k) => RawValue::Num(counts[k]),
                    };
                    entries.push((Cow::Borrowed(name), value));
                }
                RawFeatures::from_sorted(entries)
            }
            (attributes, _) => {
                let all = match attributes {
                    Attributes::All(all) => &all[..],
                    // Parsed with a plan, read without one: not how a reader works.
                    Attributes::Wanted(_) => &[],
                };
                let mut entries = Vec::with_capacity(1 + all.len() + COUNTERS);
                entries.extend(entity.id_feature().map(|name| (Cow::Borrowed(name), RawValue::from(id))));
                entries.extend(all.iter().cloned());
                let names = counter_names(entity);
                entries.extend(names.iter().zip(counts).map(|(&name, n)| (Cow::Borrowed(name), RawValue::Num(n))));
                RawFeatures::from_iter(entries)
            }
        });
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

/// The counters an entity has: clicks and impressions per window.
const COUNTERS: usize = 2 * WINDOWS.len();

/// The counter feature names, clicks then impressions per window in the order of [`WINDOWS`]
/// (`user_clicks_1h`, `user_impressions_1h`, …), made once: reads would otherwise format six
/// names per entity.
fn counter_names(entity: Entity) -> &'static [&'static str] {
    static NAMES: OnceLock<[Vec<&'static str>; 5]> = OnceLock::new();
    let all = NAMES.get_or_init(|| {
        ALL_ENTITIES.map(|entity| {
            let prefix = entity.feature_prefix();
            let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
            WINDOWS
                .iter()
                .flat_map(|w| [format!("{prefix}_clicks_{}", w.name), format!("{prefix}_impressions_{}", w.name)])
                .map(leak)
                .collect()
        })
    });
    &all[entity as usize]
}

/// Every kind, in the order of their discriminants.
const ALL_ENTITIES: [Entity; 5] =
    [Entity::User, Entity::Ad, Entity::Advertiser, Entity::UserCategory, Entity::UserAdvertiser];

/// Where a value of a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Id,
    /// The wanted attribute at this place in [`Plan::names`].
    Attribute(usize),
    /// The counter at this place in [`counter_names`].
    Counter(usize),
}

/// One entity kind's record when the wanted attributes are known: the attributes to keep, and
/// every name of the record in order with where its value comes from, worked out once.
#[derive(Debug, Clone, Default)]
struct Plan {
    names: Vec<&'static str>,
    order: Vec<(&'static str, Origin)>,
    /// The place of `category` in `names`: read per candidate, found without comparing names.
    category: Option<usize>,
}

impl Plan {
    fn new(entity: Entity, names: Vec<&'static str>) -> Self {
        let mut order: Vec<(&'static str, Origin)> = entity
            .id_feature()
            .map(|name| (name, Origin::Id))
            .into_iter()
            .chain(names.iter().enumerate().map(|(j, &name)| (name, Origin::Attribute(j))))
            .chain(counter_names(entity).iter().enumerate().map(|(k, &name)| (name, Origin::Counter(k))))
            .collect();
        // Stable: of equal names the later source (counters, then attributes, then the id) wins,
        // as when a record is sorted from its parts.
        order.sort_by(|a, b| a.0.cmp(b.0));
        order.reverse();
        order.dedup_by(|later, kept| later.0 == kept.0);
        order.reverse();
        let category = names.iter().position(|&n| n == CATEGORY_FIELD);
        Self { names, order, category }
    }
}

/// The attributes a reader keeps per entity kind (users, ads, advertisers), when it knows
/// them: each read then skips the others, and names the kept ones without an allocation.
/// [`Wanted::from_spec`] takes them from the feature spec.
///
/// Redis still sends whole records: it cannot pick parts of a string, and a record is small.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    per_entity: [Plan; 3],
    /// Whether reads fetch the user's history with each candidate's category and advertiser.
    history: bool,
}

impl Wanted {
    /// The stored attributes the spec's user, ad and advertiser features read (not the ids,
    /// counters or `ad_age_hours`, which every read provides).
    pub fn from_spec(spec: &FeatureSpec) -> Self {
        let provided = |name: &str| {
            [Entity::User, Entity::Ad, Entity::Advertiser].iter().any(|e| e.id_feature() == Some(name))
                || name == AdFeatures::AGE
                || WINDOWS.iter().any(|w| {
                    ["user", "ad", "advertiser"].iter().any(|p| {
                        name == format!("{p}_clicks_{}", w.name) || name == format!("{p}_impressions_{}", w.name)
                    })
                })
        };
        let mut names: [Vec<String>; 3] = Default::default();
        let history = spec.features.iter().any(|f| f.source == Source::History);
        if history {
            // The pairs are named by the ad's category.
            names[1].push(CATEGORY_FIELD.to_string());
        }
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
        Self { history, ..Self::new(names) }
    }

    /// The attribute names per kind: users, ads, advertisers; reads fetch history (and keep
    /// the ads' `category` for it).
    pub fn new(mut names: [Vec<String>; 3]) -> Self {
        if !names[1].iter().any(|n| n == CATEGORY_FIELD) {
            names[1].push(CATEGORY_FIELD.to_string());
        }
        // Attribute names are few and live as long as the process: leaked once, they go into
        // every read's features without an allocation.
        let mut kinds = [Entity::User, Entity::Ad, Entity::Advertiser].into_iter();
        let per_entity = names.map(|n| {
            let entity = kinds.next().expect("three kinds");
            Plan::new(entity, n.into_iter().map(|s| &*Box::leak(s.into_boxed_str())).collect())
        });
        Self { per_entity, history: true }
    }
}

/// A short-lived cache of ad and advertiser records (including absent ones), by kind and id: a
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

/// One cached entity.
#[derive(Debug)]
struct Entry {
    read_at: Instant,
    stored: Arc<Stored>,
    /// A background refresh of it is under way.
    refreshing: bool,
}

/// One kind's cached records by id.
type Entries = FxHashMap<Box<str>, Entry>;

impl Cache {
    /// Where `entity`'s entries live; users are never cached.
    fn kind(entity: Entity) -> usize {
        usize::from(entity == Entity::Advertiser)
    }

    /// The cached records of `ids` (`None`: not cached or expired), and the positions of those
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

/// The pairs of one read's user: which to read, in order, and their records once read. Named
/// without allocating: an advertiser's pair by its place among the read's entities, a
/// category's by the category's shared text; the fields are written into the command.
#[derive(Debug, Default)]
struct Pairs {
    /// (kind, the place of the advertiser among the read's entities, or of the category in
    /// `categories`), in the order they are read.
    wanted: Vec<(Entity, usize)>,
    /// By the advertiser's place among the read's entities: its pair's place in `wanted`.
    advertisers: Vec<Option<usize>>,
    /// The categories named, in the order they were.
    categories: Vec<Arc<str>>,
    /// By category: its pair's place in `wanted`.
    category_pairs: FxHashMap<Arc<str>, usize>,
    /// The records read, in the order of `wanted`.
    stored: Vec<Arc<Stored>>,
}

impl Pairs {
    fn kind(entity: Entity) -> usize {
        usize::from(entity == Entity::UserAdvertiser)
    }

    /// For a read of `entities` entities (users, ads, advertisers).
    fn new(entities: usize) -> Self {
        Self { advertisers: vec![None; entities], ..Self::default() }
    }

    /// Wants the user's pair with the advertiser at `place` among the read's entities, once.
    fn want_advertiser(&mut self, place: usize) {
        if self.advertisers[place].is_none() {
            self.advertisers[place] = Some(self.wanted.len());
            self.wanted.push((Entity::UserAdvertiser, place));
        }
    }

    /// Wants the user's pair with `category`, once.
    fn want_category(&mut self, category: &Arc<str>) {
        if !self.category_pairs.contains_key(category) {
            self.category_pairs.insert(category.clone(), self.wanted.len());
            self.wanted.push((Entity::UserCategory, self.categories.len()));
            self.categories.push(category.clone());
        }
    }

    /// The pair's place in `wanted` of the advertiser at `place` among the read's entities.
    fn advertiser(&self, place: usize) -> Option<usize> {
        self.advertisers[place]
    }

    /// The pair's place in `wanted` of `category`.
    fn category(&self, category: &str) -> Option<usize> {
        self.category_pairs.get(category).copied()
    }

    /// The wanted pairs from place `from` on, as (kind, the other id), the entities' ids given.
    fn fields<'s>(
        &'s self,
        from: usize,
        entities: &'s [(Entity, &'s str)],
    ) -> impl ExactSizeIterator<Item = (Entity, &'s str)> + Clone {
        self.wanted[from..].iter().map(move |&(entity, place)| match entity {
            Entity::UserAdvertiser => (entity, entities[place].1),
            _ => (entity, &*self.categories[place]),
        })
    }

    /// Every pair's counters at `now_ms`: zero for one absent or expired.
    fn records(&self, now_ms: i64, ttl_ms: i64) -> Vec<Arc<RawFeatures>> {
        self.wanted
            .iter()
            .zip(&self.stored)
            .map(|(&(entity, _), stored)| {
                // A pair's record has no id feature: the other id is not needed.
                if stored.live(now_ms, ttl_ms) { stored.record(entity, "", now_ms, None) } else { no_history(entity) }
            })
            .collect()
    }
}

/// An absent entity's record, shared by every read on this thread: most of a read's ~220 pairs
/// are absent, and one process-wide `Arc` cloned and dropped that often by every worker bounced
/// its count between the cores.
fn absent() -> Arc<Stored> {
    thread_local! {
        static ABSENT: Arc<Stored> = Arc::new(Stored::default());
    }
    ABSENT.with(Arc::clone)
}

/// A pair's record when the user has no history with it: zero counts, shared per thread (as
/// [`absent`]).
fn no_history(entity: Entity) -> Arc<RawFeatures> {
    thread_local! {
        static ZERO: [Arc<RawFeatures>; 2] =
            [Entity::UserCategory, Entity::UserAdvertiser].map(|e| Arc::new(id_record(e, "")));
    }
    ZERO.with(|zero| zero[Pairs::kind(entity)].clone())
}

/// Ads' categories as last read, by ad id: a read names an ad's category pair before it has
/// the ad's record (a category rarely changes; when it has, the read sees it and reads the new
/// pair). Bounded: full, it starts over.
#[derive(Debug)]
struct Categories {
    capacity: usize,
    by_ad: Mutex<FxHashMap<Box<str>, Arc<str>>>,
}

/// A held [`Categories`].
struct HeldCategories<'a> {
    capacity: usize,
    map: std::sync::MutexGuard<'a, FxHashMap<Box<str>, Arc<str>>>,
}

impl Categories {
    fn lock(&self) -> HeldCategories<'_> {
        let map = self.by_ad.lock().expect("the categories lock is never poisoned: no panics while held");
        HeldCategories { capacity: self.capacity, map }
    }
}

impl HeldCategories<'_> {
    fn get(&self, ad_id: &str) -> Option<&Arc<str>> {
        self.map.get(ad_id)
    }

    fn insert(&mut self, ad_id: &str, category: &Arc<str>) {
        if self.map.get(ad_id).is_some_and(|held| held == category) {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(ad_id) {
            self.map.clear();
        }
        self.map.insert(ad_id.into(), category.clone());
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
    categories: Arc<Categories>,
}

impl Reader {
    /// Connects; the cache follows `cache_ttl_ms` (0: none).
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        Ok(Self::with_pool(config, Pool::connect(config).await?))
    }

    /// A reader that connects when it first reads, and again after every failure: serving
    /// started while Redis is down reads features as soon as it answers. Fails only on a bad URL.
    pub fn lazy(config: &RedisConfig) -> Result<Self> {
        Ok(Self::with_pool(config, Pool::lazy(config)?))
    }

    /// One round trip (an `MGET` of one key): whether the online store answers now.
    pub async fn ping(&self) -> Result<()> {
        let mut command = Vec::with_capacity(32 + self.prefix.len());
        resp::array(&mut command, 2);
        resp::bulk(&mut command, b"MGET");
        resp::bulk(&mut command, format!("{}ping", self.prefix).as_bytes());
        self.pool.exchange(&command, 1, |_| ()).await
    }

    fn with_pool(config: &RedisConfig, pool: Pool) -> Self {
        let pool = Arc::new(pool);
        let cache = (config.cache_ttl_ms > 0 && config.cache_entries > 0).then(|| {
            Arc::new(Cache {
                ttl: Duration::from_millis(config.cache_ttl_ms),
                capacity: config.cache_entries,
                entries: Mutex::default(),
            })
        });
        let categories = Arc::new(Categories { capacity: config.cache_entries.max(1), by_ad: Mutex::default() });
        Self {
            pool,
            prefix: config.key_prefix.clone(),
            ttl_ms: config.entity_ttl_ms(),
            cache,
            wanted: None,
            categories,
        }
    }

    /// Keeps only these attributes (and the counters, ids and ad age) of what it reads. The
    /// reader gets a cache of its own: a cache holds entities as its reader keeps them.
    pub fn with_wanted(mut self, wanted: Wanted) -> Self {
        self.wanted = Some(Arc::new(wanted));
        self.cache = self
            .cache
            .map(|cache| Arc::new(Cache { ttl: cache.ttl, capacity: cache.capacity, entries: Mutex::default() }));
        self
    }

    /// Reads one user and `ads` (with their advertisers, and the user's history with each
    /// one's category and advertiser) as of `now_ms`, in one round trip for whatever the cache
    /// does not hold. A category pair is read in that round trip when the ad's category is
    /// known before it (cached, or remembered from an earlier read); an ad whose category was
    /// not known, or has changed, costs a second round trip for its pair.
    pub async fn fetch(&self, user_id: &str, ads: &[AdRef<'_>], now_ms: i64) -> Result<Fetched> {
        if ads.len() > MAX_ADS {
            return Err(Error::TooManyAds { asked: ads.len(), max: MAX_ADS });
        }
        let history = self.wanted.as_ref().is_none_or(|w| w.history);
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

        // The pairs known before the read: every advertiser's, and the categories of ads cached
        // or remembered. Pair ids are owned here; `pairs` indexes them by (kind, other id).
        let mut pairs = Pairs::new(entities.len());
        // Whether each ad's category pair was wanted before the read (cached ads' categories
        // are read again below and need nothing more when unchanged).
        let mut known: Vec<bool> = vec![false; entities.len()];
        if history {
            let remembered = self.categories.lock();
            for &(ad, advertiser) in &slots {
                pairs.want_advertiser(advertiser);
                if known[ad] {
                    continue;
                }
                let cached = stored[ad].as_deref().and_then(|s| self.category_of(s));
                if let Some(category) = cached.or_else(|| remembered.get(entities[ad].1)) {
                    pairs.want_category(category);
                    known[ad] = cached.is_some();
                }
            }
        }
        let wanted: Vec<usize> = (0..entities.len()).filter(|&i| stored[i].is_none()).collect();
        let first = pairs.wanted.len();
        let (read, history_read) =
            self.read_with_history(wanted.iter().map(|&i| entities[i]), user_id, pairs.fields(0, &entities)).await?;
        for (&i, parsed) in wanted.iter().zip(read) {
            stored[i] = Some(parsed);
        }
        pairs.stored.extend(history_read);
        if let Some(cache) = &self.cache {
            cache.put(wanted.iter().filter(|&&i| i > 0).map(|&i| (entities[i], stored[i].clone().expect("read"))), now);
        }
        if self.cache.is_some() {
            // The user is never cached, so it is no miss.
            metrics::online_cache(cache_hits, wanted.len().saturating_sub(1));
        }

        let held = |i: usize| stored[i].as_deref().expect("every key was read or cached");
        let live: Vec<bool> = (0..entities.len()).map(|i| held(i).live(now_ms, self.ttl_ms)).collect();
        // Each ad's category as read (a missing or expired ad has none), and the pairs of those
        // not read yet: a second round trip, only when there are any.
        let mut categories: Vec<Option<&str>> = vec![None; entities.len()];
        if history {
            {
                let mut remembered = self.categories.lock();
                for &(ad, _) in &slots {
                    if categories[ad].is_none() && live[ad] {
                        let Some(category) = self.category_of(held(ad)) else { continue };
                        categories[ad] = Some(category);
                        // A cached ad's record is the one its pair was wanted by: nothing new.
                        if !known[ad] {
                            remembered.insert(entities[ad].1, category);
                            pairs.want_category(category);
                        }
                    }
                }
            }
            if pairs.wanted.len() > first {
                let (_, late) =
                    self.read_with_history(std::iter::empty(), user_id, pairs.fields(first, &entities)).await?;
                pairs.stored.extend(late);
                metrics::online_history_second_read();
            }
        }

        // Distinct ads and advertisers count once, however many candidates share them.
        let mut missing = Missing { users: usize::from(!live[0]), ..Missing::default() };
        for (i, &(entity, _)) in entities.iter().enumerate().skip(1) {
            if !live[i] {
                match entity {
                    Entity::Ad => missing.ads += 1,
                    Entity::Advertiser => missing.advertisers += 1,
                    Entity::User => missing.users += 1,
                    Entity::UserCategory | Entity::UserAdvertiser => {}
                }
            }
        }
        // Each distinct entity's record once: a missing or expired one holds only its id.
        let records: Vec<Arc<RawFeatures>> = entities
            .iter()
            .enumerate()
            .map(|(i, &(entity, id))| {
                if live[i] {
                    held(i).record(entity, id, now_ms, self.plan(entity))
                } else {
                    Arc::new(id_record(entity, id))
                }
            })
            .collect();
        let pair_records = pairs.records(now_ms, self.ttl_ms);

        let user = (*records[0]).clone();
        let per_ad = slots
            .iter()
            .map(|&(ad, advertiser)| {
                let pair = |entity, place: Option<usize>| {
                    place.map_or_else(|| no_history(entity), |j| pair_records[j].clone())
                };
                AdFeatures {
                    ad: records[ad].clone(),
                    advertiser: records[advertiser].clone(),
                    ad_age_hours: if live[ad] { held(ad).age_hours(now_ms) } else { RawValue::Missing },
                    history: if history {
                        [
                            pair(Entity::UserCategory, categories[ad].and_then(|c| pairs.category(c))),
                            pair(Entity::UserAdvertiser, pairs.advertiser(advertiser)),
                        ]
                    } else {
                        Default::default()
                    },
                }
            })
            .collect();
        metrics::online_missing(missing);
        Ok(Fetched { user, ads: per_ad, missing, cache_hits })
    }

    /// An ad's category, from its stored attributes; borrowed (an `Arc` cloned per candidate
    /// bounces its count between the cores that share the category).
    fn category_of<'s>(&self, ad: &'s Stored) -> Option<&'s Arc<str>> {
        let value = match (&ad.attributes, self.plan(Entity::Ad)) {
            (Attributes::Wanted(values), Some(plan)) => values.get(plan.category?)?.as_ref(),
            _ => ad.attribute(CATEGORY_FIELD, self.plan(Entity::Ad)),
        };
        match value? {
            RawValue::Str(category) if !category.is_empty() => Some(category),
            _ => None,
        }
    }

    /// How records of `entity` are read, when the wanted attributes are known (pairs: only
    /// counters, no plan).
    fn plan(&self, entity: Entity) -> Option<&Plan> {
        self.wanted.as_ref().and_then(|w| w.per_entity.get(entity as usize))
    }

    /// Reads these entities' records in one round trip: one `MGET`.
    async fn read<'a>(
        &self,
        entities: impl ExactSizeIterator<Item = (Entity, &'a str)> + Clone,
    ) -> Result<Vec<Arc<Stored>>> {
        Ok(self.read_with_history(entities, "", std::iter::empty()).await?.0)
    }

    /// Reads these entities' records (an `MGET`) and these fields of the user's history (an
    /// `HMGET`), pipelined in one round trip; either may be empty.
    async fn read_with_history<'a>(
        &self,
        entities: impl ExactSizeIterator<Item = (Entity, &'a str)> + Clone,
        user_id: &str,
        fields: impl ExactSizeIterator<Item = (Entity, &'a str)> + Clone,
    ) -> Result<(Vec<Arc<Stored>>, Vec<Arc<Stored>>)> {
        let (count, wanted) = (entities.len(), fields.len());
        let mut command = Vec::with_capacity(32 + (count + wanted) * (16 + self.prefix.len()));
        let mut key = String::new();
        if count > 0 {
            resp::array(&mut command, 1 + count);
            resp::bulk(&mut command, b"MGET");
            for (entity, id) in entities.clone() {
                entity.write_key(&self.prefix, id, &mut key);
                resp::bulk(&mut command, key.as_bytes());
            }
        }
        if wanted > 0 {
            resp::array(&mut command, 2 + wanted);
            resp::bulk(&mut command, b"HMGET");
            layout::write_history_key(&self.prefix, user_id, &mut key);
            resp::bulk(&mut command, key.as_bytes());
            let mut field = String::new();
            for (entity, other) in fields {
                entity.write_field(other, &mut field);
                resp::bulk(&mut command, field.as_bytes());
            }
        }
        let replies = usize::from(count > 0) + usize::from(wanted > 0);
        if replies == 0 {
            return Ok(Default::default());
        }
        let read = self
            .pool
            .exchange(&command, replies, |replies| {
                let history = usize::from(count > 0);
                let fits = (count == 0 || replies.len(0) == count) && (wanted == 0 || replies.len(history) == wanted);
                fits.then(|| {
                    let records = if count > 0 {
                        entities
                            .zip(replies.reply(0))
                            // Parsed into its `Arc`: a record is a few hundred bytes, moved otherwise.
                            .map(|((entity, _), value)| Arc::new(Stored::parse(value, self.plan(entity))))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let pairs = if wanted > 0 {
                        // Most pairs are absent: one shared absent record for them all.
                        let absent = absent();
                        replies
                            .reply(history)
                            .map(|value| {
                                value.map_or_else(|| absent.clone(), |v| Arc::new(Stored::parse(Some(v), None)))
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    (records, pairs)
                })
            })
            .await?;
        read.ok_or_else(|| {
            self.pool.unexpected(format!(
                "an MGET of {count} keys and an HMGET of {wanted} fields were answered with other counts"
            ))
        })
    }

    /// Reads cached entities again, off the request path (see [`Cache`]).
    async fn refresh(self, due: Vec<(Entity, Box<str>)>) {
        let Some(cache) = &self.cache else { return };
        let read_at = Instant::now();
        match self.read(due.iter().map(|(entity, id)| (*entity, &**id))).await {
            Ok(read) => cache.put(due.iter().map(|(e, id)| (*e, &**id)).zip(read), read_at),
            Err(e) => {
                tracing::debug!(error = %e, entities = due.len(), "refreshing cached entities failed");
                cache.refresh_failed(&due);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the apply script writes one: header, rings, attributes.
    fn record(seen_ms: f64, attributes: &[(&str, RawValue)]) -> Vec<u8> {
        let mut bytes = vec![layout::RECORD_FORMAT, layout::HAS_SEEN];
        for t in [seen_ms, 0.0, 0.0, 0.0] {
            bytes.extend(t.to_le_bytes());
        }
        // The 1h ring: newest bucket 7, slot 7 % 6 = 1 holds 3 impressions and 2 clicks.
        let mut rings = [0u8; RINGS];
        rings[..4].copy_from_slice(&7u32.to_le_bytes());
        rings[12..16].copy_from_slice(&3u32.to_le_bytes());
        rings[16..20].copy_from_slice(&2u32.to_le_bytes());
        bytes.extend(rings);
        layout::encode_attributes(attributes.iter().map(|(n, v)| (*n, v)), &mut bytes);
        bytes
    }

    #[test]
    fn a_plan_builds_the_same_record_as_sorting_does() {
        let now = 7 * WINDOWS[0].bucket_ms + 1;
        let bytes = record(
            now as f64,
            &[("zone", RawValue::from("z")), ("category", RawValue::from("c")), ("extra", RawValue::Num(1.0))],
        );
        let all = Stored::parse(Some(&bytes), None).record(Entity::Ad, "a1", now, None);
        assert_eq!(all.get("ad_impressions_1h"), Some(&RawValue::Num(3.0)));
        assert_eq!(all.get("ad_clicks_1h"), Some(&RawValue::Num(2.0)));
        assert_eq!(all.get("extra"), Some(&RawValue::Num(1.0)));

        // Wanted: two of the three, one absent from the record, and a name a counter also has
        // (the counter wins, as when a record is sorted from its parts).
        let wanted = Wanted::new([
            vec![],
            vec!["zone".into(), "category".into(), "missing".into(), "ad_clicks_1h".into()],
            vec![],
        ]);
        let plan = &wanted.per_entity[1];
        let planned = Stored::parse(Some(&bytes), Some(plan)).record(Entity::Ad, "a1", now, Some(plan));
        let mut expected = (*all).clone();
        expected.remove("extra");
        assert_eq!(*planned, expected);
        assert!(planned.keys().zip(planned.keys().skip(1)).all(|(a, b)| a < b));
    }
}
