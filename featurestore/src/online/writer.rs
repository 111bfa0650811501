//! Applying events to the online store exactly once.
//!
//! The ingester turns a batch of events from one topic partition into [`Updates`] (counter
//! increments pre-aggregated per entity and time bucket, attribute snapshots), then
//! [`Writer::apply`] runs one Lua script per partition batch that checks the partition's
//! applied-offset watermark, applies every update and moves the watermark, atomically. A batch
//! whose watermark does not match what its ingester expects (a replay of offsets already applied,
//! or another ingester that took the partition over) changes nothing and is reported as
//! [`Outcome::Fenced`]. Batches of several partitions go in one pipelined round trip.

use redis::aio::MultiplexedConnection;
// Entity keys are hashed three times per event on the ingester's hot path, twice more when
// rounds merge: SipHash's protection against chosen collisions was most of that cost.
use rustc_hash::FxHashMap;

use super::layout::{self, Entity, WINDOWS};
use crate::{Error, RedisConfig, Result};
use adrank_contracts::events::{AdRecord, AdStatus, Click, Impression, RawFeatures, RawValue, UserProfile};

/// The finest counter bucket: every window's bucket is a multiple of it, so increments
/// aggregated per finest bucket land in the right bucket of every window.
const FINEST_BUCKET_MS: i64 = WINDOWS[0].bucket_ms;

/// The online-store effect of a batch of events, pre-aggregated: a batch of 5,000 impressions
/// touches far fewer (entity, bucket) pairs than it has events.
#[derive(Debug, Default)]
pub struct Updates {
    counters: FxHashMap<String, EntityCounters>,
    /// The users' history pairs: by history hash key, then by field.
    pairs: FxHashMap<String, FxHashMap<String, EntityCounters>>,
    attributes: Vec<AttributeUpdate>,
    clicks: Vec<ClickMark>,
    events: usize,
    /// The key and the field being looked up: an entity already counted this round (most are)
    /// costs no allocation.
    key: String,
    field: String,
}

#[derive(Debug, Default)]
struct EntityCounters {
    seen_ms: i64,
    /// (finest bucket index (time / the finest bucket), (impressions, clicks)), ascending by
    /// bucket, as the script wants them: a round's events of one entity fall in a bucket or two.
    buckets: Vec<(i64, (u32, u32))>,
}

impl EntityCounters {
    /// The script's binary argument for this entity (apply.lua): seen_ms as an f64, the bucket
    /// count, then (bucket, impressions, clicks) per bucket, little-endian `u32`s. Event times
    /// are validated to lie before the year 10,000, so both fit exactly.
    fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend((self.seen_ms as f64).to_le_bytes());
        out.extend((self.buckets.len() as u32).to_le_bytes());
        for &(bucket, (impressions, clicks)) in &self.buckets {
            let bucket = u32::try_from(bucket).expect("validated event times have buckets that fit a u32");
            for word in [bucket, impressions, clicks] {
                out.extend(word.to_le_bytes());
            }
        }
    }

    fn add(&mut self, seen_ms: i64, bucket: i64, (impressions, clicks): (u32, u32)) {
        self.seen_ms = self.seen_ms.max(seen_ms);
        let at = match self.buckets.binary_search_by_key(&bucket, |&(b, _)| b) {
            Ok(at) => at,
            Err(at) => {
                self.buckets.insert(at, (bucket, (0, 0)));
                at
            }
        };
        let slot = &mut self.buckets[at].1;
        slot.0 += impressions;
        slot.1 += clicks;
    }
}

/// A click, counted in its entities' counters, and the key that marks its id as counted: the
/// script takes a click whose id is marked already back out of those counters.
#[derive(Debug)]
struct ClickMark {
    key: String,
    /// Its entities' keys: user, ad, advertiser.
    entities: [String; 3],
    /// Its user's history key and its pairs' fields there.
    history: String,
    fields: Vec<String>,
    bucket: u32,
}

#[derive(Debug)]
struct AttributeUpdate {
    key: String,
    event_time_ms: i64,
    /// Sets `created_ms` when the entity has none (an ad's first live record).
    created: bool,
    /// The attributes, encoded as a record holds them ([`layout::encode_attributes`]).
    attributes: Vec<u8>,
}

impl Updates {
    /// Events folded in so far.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Records the script writes for these updates: entities, history pairs, attribute
    /// snapshots, click ids.
    pub fn records(&self) -> usize {
        let pairs: usize = self.pairs.values().map(FxHashMap::len).sum();
        self.counters.len() + pairs + self.attributes.len() + self.clicks.len()
    }

    /// An impression counts for its user, ad and advertiser, and for the user's history with
    /// the ad's category (when the impression names one) and with the advertiser.
    pub fn impression(&mut self, prefix: &str, impression: &Impression) {
        let ids = Ids {
            user: &impression.user_id,
            ad: &impression.ad_id,
            advertiser: &impression.advertiser_id,
            category: impression.category(),
        };
        self.count(prefix, ids, impression.event_time_ms, (1, 0));
    }

    /// A click counts for the same entities as its impression (the category as the click
    /// carries it), in the bucket of the click's own time, once per click id: a retry (the same
    /// `click_id` again) is taken back out by the script.
    pub fn click(&mut self, prefix: &str, click: &Click) {
        let ids = Ids {
            user: &click.user_id,
            ad: &click.ad_id,
            advertiser: &click.advertiser_id,
            category: click.category.as_deref(),
        };
        self.count(prefix, ids, click.event_time_ms, (0, 1));
        let bucket = click.event_time_ms.div_euclid(FINEST_BUCKET_MS);
        self.clicks.push(ClickMark {
            key: layout::click_key(prefix, &click.click_id),
            entities: ids.entities().map(|(entity, id)| entity.key(prefix, id)),
            history: layout::history_key(prefix, ids.user),
            fields: ids
                .pairs()
                .map(|(entity, other)| {
                    let mut field = String::new();
                    entity.write_field(other, &mut field);
                    field
                })
                .collect(),
            bucket: u32::try_from(bucket).expect("validated event times have buckets that fit a u32"),
        });
    }

    /// A user profile replaces the user's attributes (when it is newer than the ones held).
    pub fn profile(&mut self, prefix: &str, profile: &UserProfile) {
        self.events += 1;
        self.attributes.push(AttributeUpdate {
            key: Entity::User.key(prefix, &profile.user_id),
            event_time_ms: profile.event_time_ms,
            created: false,
            attributes: encoded_attributes(&profile.attributes, []),
        });
    }

    /// A catalog record replaces the ad's attributes; its first live record sets the creation
    /// time that `ad_age_hours` is read from.
    pub fn ad(&mut self, prefix: &str, ad: &AdRecord) {
        self.events += 1;
        let status = match ad.status {
            AdStatus::Live => "live",
            AdStatus::Retired => "retired",
        };
        self.attributes.push(AttributeUpdate {
            key: Entity::Ad.key(prefix, &ad.ad_id),
            event_time_ms: ad.event_time_ms,
            created: ad.status == AdStatus::Live,
            attributes: encoded_attributes(
                &ad.attributes,
                [("advertiser_id", RawValue::from(ad.advertiser_id.as_str())), ("status", RawValue::from(status))],
            ),
        });
    }

    /// Counts one event for its user, ad and advertiser, and for its user's pairs.
    fn count(&mut self, prefix: &str, ids: Ids<'_>, time_ms: i64, counts: (u32, u32)) {
        self.events += 1;
        let bucket = time_ms.div_euclid(FINEST_BUCKET_MS);
        for (entity, id) in ids.entities() {
            entity.write_key(prefix, id, &mut self.key);
            add(&mut self.counters, &self.key, (time_ms, bucket), counts);
        }
        layout::write_history_key(prefix, ids.user, &mut self.key);
        if !self.pairs.contains_key(self.key.as_str()) {
            self.pairs.insert(self.key.clone(), FxHashMap::default());
        }
        let fields = self.pairs.get_mut(self.key.as_str()).expect("inserted just above");
        for (entity, other) in ids.pairs() {
            entity.write_field(other, &mut self.field);
            add(fields, &self.field, (time_ms, bucket), counts);
        }
    }
}

/// Adds counts to the counters of `key` in `map`, allocating the key only when it is new.
fn add(map: &mut FxHashMap<String, EntityCounters>, key: &str, (time_ms, bucket): (i64, i64), counts: (u32, u32)) {
    if let Some(counters) = map.get_mut(key) {
        counters.add(time_ms, bucket, counts);
    } else {
        let mut counters = EntityCounters::default();
        counters.add(time_ms, bucket, counts);
        map.insert(key.to_string(), counters);
    }
}

/// The ids an impression or a click counts for.
#[derive(Clone, Copy)]
struct Ids<'a> {
    user: &'a str,
    ad: &'a str,
    advertiser: &'a str,
    category: Option<&'a str>,
}

impl<'a> Ids<'a> {
    fn entities(self) -> [(Entity, &'a str); 3] {
        [(Entity::User, self.user), (Entity::Ad, self.ad), (Entity::Advertiser, self.advertiser)]
    }

    /// The user's pairs: with the advertiser, and with the category when there is one.
    fn pairs(self) -> impl Iterator<Item = (Entity, &'a str)> {
        std::iter::once((Entity::UserAdvertiser, self.advertiser))
            .chain(self.category.map(|category| (Entity::UserCategory, category)))
    }
}

/// A snapshot's attributes and the `extra` ones the record's own fields give (which win over
/// attributes of the same name), encoded as a record holds them.
fn encoded_attributes<const N: usize>(attributes: &RawFeatures, extra: [(&str, RawValue); N]) -> Vec<u8> {
    let mut encoded = Vec::new();
    let own = attributes.iter().filter(|(name, _)| !extra.iter().any(|(e, _)| e == name));
    layout::encode_attributes(own.chain(extra.iter().map(|(name, value)| (*name, value))), &mut encoded);
    encoded
}

/// Several batches' updates as one: counters summed per entity and bucket, attribute
/// snapshots side by side (the script keeps the newest).
#[derive(Default)]
struct Merged<'a> {
    counters: FxHashMap<&'a str, EntityCounters>,
    /// By history key, then by field.
    pairs: FxHashMap<&'a str, FxHashMap<&'a str, EntityCounters>>,
    attributes: Vec<&'a AttributeUpdate>,
    clicks: Vec<&'a ClickMark>,
}

impl<'a> Merged<'a> {
    fn of(updates: impl Iterator<Item = &'a Updates>) -> Self {
        let mut merged = Self::default();
        let fold = |into: &mut FxHashMap<&'a str, EntityCounters>, from: &'a FxHashMap<String, EntityCounters>| {
            for (key, counters) in from {
                let into = into.entry(key.as_str()).or_default();
                for &(bucket, counts) in &counters.buckets {
                    into.add(counters.seen_ms, bucket, counts);
                }
            }
        };
        for updates in updates {
            fold(&mut merged.counters, &updates.counters);
            for (key, fields) in &updates.pairs {
                fold(merged.pairs.entry(key.as_str()).or_default(), fields);
            }
            merged.attributes.extend(&updates.attributes);
            merged.clicks.extend(&updates.clicks);
        }
        merged
    }
}

/// What happened to one partition batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; the watermark is now the batch's `next` offset.
    Applied,
    /// Not applied: the stored watermark is not the one expected.
    Fenced { current: Option<i64> },
}

/// One topic partition's batch: the offsets it covers and its updates.
#[derive(Debug)]
pub struct PartitionBatch<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// The watermark the ingester believes is stored (`None`: nothing applied yet).
    pub expected: Option<i64>,
    /// The next offset to apply after this batch.
    pub next: i64,
    pub updates: &'a Updates,
}

/// Applies partition batches to the online store.
#[derive(Debug, Clone)]
pub struct Writer {
    connection: MultiplexedConnection,
    url: String,
    prefix: String,
    ttl_ms: i64,
    /// How long a counted click's id is remembered: a retry within it counts nothing.
    click_dedup_ms: i64,
    /// The most records one script call writes (at least one batch goes in each call).
    records_per_call: usize,
    script: String,
    sha: String,
}

impl Writer {
    /// Connects and loads the apply script.
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        // A round's scripts take far longer than a read: give them time. (A timed-out script may
        // still complete; the restart's watermark check makes that harmless.)
        let connection = super::connect_with(config, std::time::Duration::from_secs(30)).await?;
        let script = apply_script();
        // Redis names a script by its SHA-1: known here, pipelined EVALSHA needs no round trip.
        let sha = redis::Script::new(&script).get_hash().to_string();
        let mut writer = Self {
            connection,
            url: config.url.clone(),
            prefix: config.key_prefix.clone(),
            ttl_ms: config.entity_ttl_ms(),
            click_dedup_ms: crate::IngestConfig::default().click_dedup_ms(),
            records_per_call: usize::MAX,
            script,
            sha,
        };
        writer.load_script().await?;
        Ok(writer)
    }

    /// Remembers counted click ids for `span_ms` (at least a millisecond), so a retried click
    /// counts once if it comes within it.
    pub fn dedup_clicks_for(mut self, span_ms: i64) -> Self {
        self.click_dedup_ms = span_ms.max(1);
        self
    }

    /// Splits [`Writer::apply`]'s batches into script calls of at most `records` records, one
    /// after another: Redis runs a script to completion, so a read waits for the call it arrives
    /// behind. A batch bigger than that still goes whole.
    pub fn records_per_call(mut self, records: usize) -> Self {
        self.records_per_call = records.max(1);
        self
    }

    /// The key prefix updates must be built with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn load_script(&mut self) -> Result<()> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(&self.script)
            .query_async(&mut self.connection)
            .await
            .map_err(|e| self.error(e))?;
        debug_assert_eq!(sha, self.sha);
        self.sha = sha;
        Ok(())
    }

    /// The stored watermarks of these topic partitions.
    pub async fn watermarks(&mut self, partitions: &[(&str, i32)]) -> Result<Vec<Option<i64>>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let fields: Vec<String> = partitions.iter().map(|(t, p)| layout::offsets_field(t, *p)).collect();
        let values: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(layout::offsets_key(&self.prefix))
            .arg(&fields)
            .query_async(&mut self.connection)
            .await
            .map_err(|e| self.error(e))?;
        Ok(values)
    }

    /// Applies every batch and its watermark, atomically per script call: consecutive batches
    /// go in one call while their records fit [`Writer::records_per_call`], their updates merged
    /// so an entity touched by several is written once; the calls run one after another. When a
    /// watermark is not the expected one, nothing of that batch is applied, it is reported
    /// fenced, and the others of its call are applied without it. (A later batch of the same
    /// partition expects what the fenced one would have left, which Redis holds only if another
    /// writer left it, in which case applying the later one is right.)
    pub async fn apply(&mut self, batches: &[PartitionBatch<'_>]) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(batches.len());
        for call in calls(batches, self.records_per_call) {
            outcomes.extend(self.apply_call(&batches[call]).await?);
        }
        Ok(outcomes)
    }

    /// Applies batches in one script call (again without the fenced ones, if any were).
    async fn apply_call(&mut self, batches: &[PartitionBatch<'_>]) -> Result<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batches.len()];
        let mut live: Vec<usize> = (0..batches.len()).collect();
        while !live.is_empty() {
            let chosen: Vec<&PartitionBatch<'_>> = live.iter().map(|&i| &batches[i]).collect();
            let merged = Merged::of(chosen.iter().map(|b| b.updates));
            tracing::trace!(
                partitions = chosen.len(),
                entities = merged.counters.len() + merged.attributes.len(),
                "apply"
            );
            let fenced = match self.invoke(&chosen, &merged).await {
                // Redis restarted or its scripts were flushed: load again and retry once.
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    self.load_script().await?;
                    self.invoke(&chosen, &merged).await.map_err(|e| self.error(e))?
                }
                result => result.map_err(|e| self.error(e))?,
            };
            if fenced.is_empty() {
                for &i in &live {
                    outcomes[i] = Some(Outcome::Applied);
                }
                break;
            }
            for (position, current) in fenced {
                outcomes[live[position]] = Some(Outcome::Fenced { current });
            }
            live.retain(|&i| outcomes[i].is_none());
        }
        Ok(outcomes.into_iter().map(|o| o.expect("every batch was applied or fenced")).collect())
    }

    /// Runs the script once; returns the fenced batches (position among `batches`, current
    /// watermark), empty when everything was applied.
    async fn invoke(
        &mut self,
        batches: &[&PartitionBatch<'_>],
        merged: &Merged<'_>,
    ) -> redis::RedisResult<Vec<(usize, Option<i64>)>> {
        let pairs: Vec<(&str, &str, &EntityCounters)> = merged
            .pairs
            .iter()
            .flat_map(|(key, fields)| fields.iter().map(move |(field, counters)| (*key, *field, counters)))
            .collect();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha)
            .arg(1 + merged.counters.len() + merged.attributes.len() + merged.clicks.len() + pairs.len())
            .arg(layout::offsets_key(&self.prefix));
        // Counter updates by key, then pair updates by (history key, field), numbered from 1 as
        // the script numbers them.
        let mut position: FxHashMap<&str, u32> = FxHashMap::default();
        for (key, at) in merged.counters.keys().zip(1..) {
            cmd.arg(*key);
            position.insert(key, at);
        }
        for update in &merged.attributes {
            cmd.arg(&update.key);
        }
        for click in &merged.clicks {
            cmd.arg(&click.key);
        }
        let first_pair = 1 + merged.counters.len() as u32;
        let mut pair_position: FxHashMap<(&str, &str), u32> = FxHashMap::default();
        for (&(key, field, _), at) in pairs.iter().zip(first_pair..) {
            cmd.arg(key);
            pair_position.insert((key, field), at);
        }
        cmd.arg(batches.len());
        for batch in batches {
            cmd.arg(layout::offsets_field(batch.topic, batch.partition))
                .arg(batch.expected.map(|o| o.to_string()).unwrap_or_default())
                .arg(batch.next);
        }
        cmd.arg(self.ttl_ms)
            .arg(merged.counters.len())
            .arg(merged.attributes.len())
            .arg(merged.clicks.len())
            .arg(self.click_dedup_ms)
            .arg(pairs.len());
        let mut blob = Vec::new();
        for counters in merged.counters.values() {
            counters.encode(&mut blob);
            cmd.arg(&blob);
        }
        for update in &merged.attributes {
            cmd.arg(update.event_time_ms).arg(u8::from(update.created)).arg(&update.attributes);
        }
        for click in &merged.clicks {
            blob.clear();
            blob.extend(click.bucket.to_le_bytes());
            for entity in &click.entities {
                blob.extend(position[entity.as_str()].to_le_bytes());
            }
            for field in &click.fields {
                blob.extend(pair_position[&(click.history.as_str(), field.as_str())].to_le_bytes());
            }
            cmd.arg(&blob);
        }
        for (_, field, counters) in &pairs {
            counters.encode(&mut blob);
            cmd.arg(*field).arg(&blob);
        }
        // {1, retried clicks} when applied; {0, position, current, position, current, …} when
        // fenced.
        let reply: Vec<redis::Value> = cmd.query_async(&mut self.connection).await?;
        let number = |value: &redis::Value| -> Option<i64> {
            match value {
                redis::Value::Int(n) => Some(*n),
                redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
                _ => None,
            }
        };
        if reply.first().and_then(number) == Some(1) {
            crate::metrics::retried_clicks(reply.get(1).and_then(number).unwrap_or(0));
            return Ok(Vec::new());
        }
        let fenced: Vec<(usize, Option<i64>)> = reply
            .get(1..)
            .unwrap_or_default()
            .chunks(2)
            .filter_map(|pair| Some((number(&pair[0])? as usize, number(pair.get(1)?))))
            .collect();
        if fenced.is_empty() {
            // Neither applied nor a list of fenced partitions: not this script's reply.
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply from the apply script",
                format!("{reply:?}"),
            )));
        }
        Ok(fenced)
    }

    fn error(&self, source: redis::RedisError) -> Error {
        Error::Redis { url: self.url.clone(), source }
    }
}

/// Consecutive batches grouped into script calls of at most `records` records (a bigger batch
/// goes alone), never two batches of one partition in a call: the script checks each batch
/// against the watermark stored before the call.
fn calls(batches: &[PartitionBatch<'_>], records: usize) -> Vec<std::ops::Range<usize>> {
    let mut calls = Vec::new();
    let mut start = 0;
    while start < batches.len() {
        let mut end = start + 1;
        let mut held = batches[start].updates.records();
        while let Some(next) = batches.get(end) {
            let twice = batches[start..end].iter().any(|b| (b.topic, b.partition) == (next.topic, next.partition));
            if twice || held + next.updates.records() > records {
                break;
            }
            held += next.updates.records();
            end += 1;
        }
        calls.push(start..end);
        start = end;
    }
    calls
}

/// The apply script, with the record's format, flags, header and counter windows written in
/// from [`layout`] so that the script and the reader cannot disagree on the layout.
fn apply_script() -> String {
    // Windows in units of the finest bucket, which is what the script receives.
    let windows: Vec<String> =
        WINDOWS.iter().map(|w| format!("{{{}, {}}}", w.bucket_ms / FINEST_BUCKET_MS, w.buckets)).collect();
    let flags =
        [layout::HAS_SEEN, layout::HAS_CREATED, layout::HAS_UPDATED, layout::HAS_EXPIRES].map(|f| f.to_string());
    // The rings joined in one concatenation: `e[1] .. e[2] .. …`.
    let rings: Vec<String> = (1..=WINDOWS.len()).map(|w| format!("e[{w}]")).collect();
    include_str!("apply.lua")
        .replace("__RINGS__", &rings.join(" .. "))
        .replace("__FORMAT__", &layout::RECORD_FORMAT.to_string())
        .replace("__FLAGS__", &flags.join(", "))
        .replace("__HEADER__", &layout::HEADER_BYTES.to_string())
        .replace("__WINDOWS__", &windows.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_hold_at_most_the_records_and_one_batch_per_partition() {
        let updates = |users: usize| {
            let mut updates = Updates::default();
            for user in 0..users {
                let mut impression = Impression::example("i", RawFeatures::new());
                impression.user_id = format!("u{user}");
                updates.impression("p:", &impression);
            }
            updates // per user the user and its pair with the advertiser, + the ad + the advertiser
        };
        let (small, big) = (updates(1), updates(10));
        let batch = |partition, updates| PartitionBatch { topic: "t", partition, expected: None, next: 1, updates };
        let batches = [batch(0, &small), batch(1, &small), batch(2, &big), batch(3, &small), batch(3, &small)];
        // 4 + 4 fit 8; 22 goes alone; partition 3's two batches go in two calls.
        assert_eq!(calls(&batches, 8), [0..2, 2..3, 3..4, 4..5]);
        assert_eq!(calls(&batches, usize::MAX), [0..4, 4..5]);
        assert_eq!(calls(&batches, 1), [0..1, 1..2, 2..3, 3..4, 4..5]);
        assert!(calls(&[], 6).is_empty());
    }

    #[test]
    fn window_buckets_are_multiples_of_the_finest() {
        for window in WINDOWS {
            assert_eq!(window.bucket_ms % FINEST_BUCKET_MS, 0, "{}", window.name);
        }
    }

    #[test]
    fn updates_aggregate_per_entity_and_bucket() {
        let mut updates = Updates::default();
        let mut impression = Impression::example("i-1", RawFeatures::new());
        impression.event_time_ms = 1_000;
        updates.impression("p:", &impression);
        impression.event_time_ms = 2_000;
        updates.impression("p:", &impression);
        assert_eq!(updates.events(), 2);
        // The user, the ad, the advertiser; the user's pair with the advertiser (no category).
        assert_eq!(updates.counters.len(), 3);
        assert_eq!(updates.pairs["p:h:u-1"]["v:adv-1"].buckets, [(0, (2, 0))]);
        assert_eq!(updates.records(), 4);
        let mut with_category = impression.clone();
        with_category.features.insert(adrank_contracts::events::CATEGORY_FIELD, RawValue::from("shoes"));
        updates.impression("p:", &with_category);
        assert_eq!(updates.pairs["p:h:u-1"]["c:shoes"].buckets, [(0, (1, 0))]);
        assert_eq!(updates.records(), 5);
        let user = &updates.counters["p:u:u-1"];
        assert_eq!(user.seen_ms, 2_000);
        assert_eq!(user.buckets, [(0, (3, 0))]);
        let merged = Merged::of([&updates, &updates].into_iter());
        assert_eq!(merged.counters["p:u:u-1"].buckets, [(0, (6, 0))]);
        assert_eq!(merged.pairs["p:h:u-1"]["v:adv-1"].buckets, [(0, (6, 0))]);
        // Buckets stay ascending whatever order the events come in (the script relies on it).
        let mut late = Updates::default();
        for minutes in [50, 5, 25, 50] {
            impression.event_time_ms = minutes * 60_000;
            late.impression("p:", &impression);
        }
        assert_eq!(late.counters["p:u:u-1"].buckets, [(0, (1, 0)), (2, (1, 0)), (5, (2, 0))]);
    }
}
