//! Applying events to the online store exactly once.
//!
//! The ingester turns a batch of events from one topic partition into [`Updates`] (counter
//! increments pre-aggregated per entity and time bucket, attribute snapshots), then
//! [`Writer::apply`] runs one Lua script per partition batch that checks the partition's
//! applied-offset watermark, applies every update and moves the watermark, atomically. A batch
//! whose watermark does not match what its ingester expects (a replay of offsets already applied,
//! or another ingester that took the partition over) changes nothing and is reported as
//! [`Outcome::Fenced`]. Batches of several partitions go in one pipelined round trip.

use std::collections::{BTreeMap, HashMap};

use redis::aio::MultiplexedConnection;

use super::layout::{self, ATTRIBUTE_PREFIX, Entity, WINDOWS};
use crate::{
    Error, RedisConfig, Result,
    events::{AdRecord, AdStatus, Click, Impression, RawFeatures, UserProfile},
};

/// The finest counter bucket: every window's bucket is a multiple of it, so increments
/// aggregated per finest bucket land in the right bucket of every window.
const FINEST_BUCKET_MS: i64 = WINDOWS[0].bucket_ms;

/// The online-store effect of a batch of events, pre-aggregated: a batch of 5,000 impressions
/// touches far fewer (entity, bucket) pairs than it has events.
#[derive(Debug, Default)]
pub struct Updates {
    counters: HashMap<String, EntityCounters>,
    attributes: Vec<AttributeUpdate>,
    events: usize,
}

#[derive(Debug, Default)]
struct EntityCounters {
    seen_ms: i64,
    /// Finest bucket start -> (impressions, clicks).
    buckets: BTreeMap<i64, (u32, u32)>,
}

#[derive(Debug)]
struct AttributeUpdate {
    key: String,
    event_time_ms: i64,
    /// Sets `created_ms` when the entity has none (an ad's first live record).
    created: bool,
    fields: Vec<(String, String)>,
}

impl Updates {
    /// Events folded in so far.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Whether nothing was folded in.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// An impression counts for its user, ad and advertiser.
    pub fn impression(&mut self, prefix: &str, impression: &Impression) {
        self.count(
            prefix,
            [&impression.user_id, &impression.ad_id, &impression.advertiser_id],
            impression.event_time_ms,
            (1, 0),
        );
    }

    /// A click counts for its user, ad and advertiser, in the bucket of the click's own time.
    pub fn click(&mut self, prefix: &str, click: &Click) {
        self.count(prefix, [&click.user_id, &click.ad_id, &click.advertiser_id], click.event_time_ms, (0, 1));
    }

    /// A user profile replaces the user's attributes (when it is newer than the ones held).
    pub fn profile(&mut self, prefix: &str, profile: &UserProfile) {
        self.events += 1;
        self.attributes.push(AttributeUpdate {
            key: Entity::User.key(prefix, &profile.user_id),
            event_time_ms: profile.event_time_ms,
            created: false,
            fields: attribute_fields(&profile.attributes, []),
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
            fields: attribute_fields(
                &ad.attributes,
                [("advertiser_id", ad.advertiser_id.as_str()), ("status", status)],
            ),
        });
    }

    fn count(&mut self, prefix: &str, ids: [&str; 3], time_ms: i64, (impressions, clicks): (u32, u32)) {
        self.events += 1;
        let bucket = time_ms.div_euclid(FINEST_BUCKET_MS) * FINEST_BUCKET_MS;
        for (entity, id) in [Entity::User, Entity::Ad, Entity::Advertiser].into_iter().zip(ids) {
            let counters = self.counters.entry(entity.key(prefix, id)).or_default();
            counters.seen_ms = counters.seen_ms.max(time_ms);
            let slot = counters.buckets.entry(bucket).or_default();
            slot.0 += impressions;
            slot.1 += clicks;
        }
    }
}

fn attribute_fields<'a>(
    attributes: &RawFeatures,
    extra: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, String)> {
    attributes
        .iter()
        .filter_map(|(name, value)| Some((format!("{ATTRIBUTE_PREFIX}{name}"), layout::encode_value(value)?)))
        .chain(extra.into_iter().map(|(name, value)| (format!("{ATTRIBUTE_PREFIX}{name}"), format!("s{value}"))))
        .collect()
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
            script,
            sha,
        };
        writer.load_script().await?;
        Ok(writer)
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

    /// Applies each batch atomically with its watermark, all in one round trip.
    pub async fn apply(&mut self, batches: &[PartitionBatch<'_>]) -> Result<Vec<Outcome>> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        match self.try_apply(batches).await {
            // Redis restarted or its scripts were flushed: load again and retry. Nothing was
            // applied, since every call in the pipeline failed the same way.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load_script().await?;
                self.try_apply(batches).await.map_err(|e| self.error(e))
            }
            result => result.map_err(|e| self.error(e)),
        }
    }

    async fn try_apply(&mut self, batches: &[PartitionBatch<'_>]) -> redis::RedisResult<Vec<Outcome>> {
        let mut pipe = redis::pipe();
        let offsets_key = layout::offsets_key(&self.prefix);
        for batch in batches {
            pipe.add_command(self.invocation(&offsets_key, batch));
        }
        let replies: Vec<(i64, Option<i64>)> = pipe.query_async(&mut self.connection).await?;
        Ok(replies
            .into_iter()
            .map(|(applied, current)| if applied == 1 { Outcome::Applied } else { Outcome::Fenced { current } })
            .collect())
    }

    fn invocation(&self, offsets_key: &str, batch: &PartitionBatch<'_>) -> redis::Cmd {
        let updates = batch.updates;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(1 + updates.counters.len() + updates.attributes.len()).arg(offsets_key);
        for key in updates.counters.keys() {
            cmd.arg(key);
        }
        for update in &updates.attributes {
            cmd.arg(&update.key);
        }
        cmd.arg(layout::offsets_field(batch.topic, batch.partition))
            .arg(batch.expected.map(|o| o.to_string()).unwrap_or_default())
            .arg(batch.next)
            .arg(self.ttl_ms)
            .arg(updates.counters.len())
            .arg(updates.attributes.len());
        for counters in updates.counters.values() {
            cmd.arg(counters.seen_ms).arg(counters.buckets.len());
            for (bucket, (impressions, clicks)) in &counters.buckets {
                cmd.arg(bucket).arg(impressions).arg(clicks);
            }
        }
        for update in &updates.attributes {
            cmd.arg(update.event_time_ms).arg(u8::from(update.created)).arg(update.fields.len());
            for (field, value) in &update.fields {
                cmd.arg(field).arg(value);
            }
        }
        cmd
    }

    fn error(&self, source: redis::RedisError) -> Error {
        Error::Redis { url: self.url.clone(), source }
    }
}

/// The apply script, with the counter windows written in from [`WINDOWS`] so that the script
/// and the reader cannot disagree on the layout.
fn apply_script() -> String {
    let windows: Vec<String> = WINDOWS.iter().map(|w| format!("{{{}, {}}}", w.bucket_ms, w.buckets)).collect();
    let words = layout::total_slots() * layout::SLOT_WORDS;
    include_str!("apply.lua")
        .replace("__WINDOWS__", &windows.join(", "))
        .replace("__WORDS__", &words.to_string())
        .replace("__BYTES__", &layout::COUNTS_BYTES.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(updates.counters.len(), 3);
        let user = &updates.counters["p:u:u-1"];
        assert_eq!(user.seen_ms, 2_000);
        assert_eq!(user.buckets.get(&0), Some(&(2, 0)));
    }
}
