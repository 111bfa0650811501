//! The online store against the real Redis: exactly-once application, windows, TTL on reads
//! and in Redis, snapshots that replace attributes, the read client and its cache.

use std::time::Duration;

use adrank_contracts::events::{AdRecord, AdStatus, Click, Impression, RawFeatures, RawValue, UserProfile};
use adrank_featurestore::{
    RedisConfig,
    online::{AdRef, Outcome, PartitionBatch, Reader, Updates, Wanted, Writer},
};
use adrank_testkit::redis::TestRedis;

const DAY_MS: i64 = 24 * 3_600_000;
/// 2026-01-01T00:00Z, the world's default start.
const T0: i64 = 1_767_225_600_000;

fn impression(id: &str, user: &str, ad: &str, advertiser: &str, time: i64) -> Impression {
    let mut impression = Impression::example(id, RawFeatures::new());
    impression.user_id = user.into();
    impression.ad_id = ad.into();
    impression.advertiser_id = advertiser.into();
    impression.event_time_ms = time;
    impression
}

fn click(impression: &Impression, time: i64) -> Click {
    Click::on(impression, format!("c-{}", impression.impression_id), time)
}

fn num(features: &RawFeatures, name: &str) -> Option<f64> {
    match features.get(name) {
        Some(RawValue::Num(x)) => Some(*x),
        _ => None,
    }
}

async fn apply(writer: &mut Writer, partition: i32, expected: Option<i64>, next: i64, updates: &Updates) -> Outcome {
    let batch = PartitionBatch { topic: "t", partition, expected, next, updates };
    writer.apply(&[batch]).await.unwrap().remove(0)
}

/// A writer on `config` that has applied one impression (user `u`, ad `a`, advertiser `v` at
/// `T0`) as partition 0's first batch (its watermark is now 1); and its key prefix.
async fn one_impression_applied(config: &RedisConfig) -> (Writer, String) {
    let mut writer = Writer::connect(config).await.unwrap();
    let prefix = writer.prefix().to_string();
    let mut updates = Updates::default();
    updates.impression(&prefix, &impression("i", "u", "a", "v", T0));
    assert_eq!(apply(&mut writer, 0, None, 1, &updates).await, Outcome::Applied);
    (writer, prefix)
}

#[tokio::test]
async fn events_apply_once_and_read_back_as_features() {
    let redis = TestRedis::new().await;
    let mut writer = Writer::connect(&redis.config).await.unwrap();
    let prefix = writer.prefix().to_string();

    let mut updates = Updates::default();
    updates.profile(
        &prefix,
        &UserProfile {
            user_id: "u1".into(),
            event_time_ms: T0,
            attributes: RawFeatures::from([
                ("segment".into(), RawValue::from("s2")),
                ("age".into(), RawValue::Num(31.0)),
            ]),
        },
    );
    updates.ad(
        &prefix,
        &AdRecord {
            ad_id: "a1".into(),
            advertiser_id: "v1".into(),
            event_time_ms: T0,
            status: AdStatus::Live,
            attributes: RawFeatures::from([("category".into(), RawValue::from("shoes"))]),
        },
    );
    // Day 0: three impressions of a1 (one clicked); day 3: one more.
    for (i, time) in [T0 + 1_000, T0 + 2_000, T0 + 3_000, T0 + 3 * DAY_MS].into_iter().enumerate() {
        let shown = impression(&format!("i{i}"), "u1", "a1", "v1", time);
        updates.impression(&prefix, &shown);
        if i == 0 {
            updates.click(&prefix, &click(&shown, time + 5_000));
        }
    }
    assert_eq!(apply(&mut writer, 0, None, 10, &updates).await, Outcome::Applied);
    // The same batch again, as after a crash before the ingester learnt it was applied: refused.
    assert_eq!(apply(&mut writer, 0, None, 10, &updates).await, Outcome::Fenced { current: Some(10) });
    assert_eq!(writer.watermarks(&[("t", 0), ("t", 1)]).await.unwrap(), [Some(10), None]);

    let reader = Reader::connect(&RedisConfig { cache_ttl_ms: 0, ..redis.config.clone() }).await.unwrap();
    let ads = [AdRef { ad_id: "a1", advertiser_id: "v1" }, AdRef { ad_id: "a-new", advertiser_id: "v1" }];
    // Read on day 6: the 7-day window holds days 0-6.
    let day6 = T0 + 6 * DAY_MS + 3_600_000;
    let fetched = reader.fetch("u1", &ads, day6).await.unwrap();
    assert_eq!(fetched.user.get("segment"), Some(&RawValue::from("s2")));
    assert_eq!(num(&fetched.user, "age"), Some(31.0));
    assert_eq!(num(&fetched.user, "user_impressions_7d"), Some(4.0), "counted once despite the replay");
    assert_eq!(num(&fetched.user, "user_clicks_7d"), Some(1.0));
    assert_eq!(num(&fetched.user, "user_impressions_1d"), Some(0.0));
    let a1 = &fetched.ads[0].record();
    assert_eq!(a1.get("category"), Some(&RawValue::from("shoes")));
    assert_eq!(a1.get("ad_id"), Some(&RawValue::from("a1")));
    assert_eq!(num(a1, "ad_impressions_7d"), Some(4.0));
    assert_eq!(num(a1, "advertiser_clicks_7d"), Some(1.0));
    assert_eq!(num(a1, "ad_age_hours"), Some(6.0 * 24.0 + 1.0));
    // An unknown ad: its id and its advertiser's features, nothing else; counted missing.
    let unknown = &fetched.ads[1].record();
    assert_eq!(unknown.get("ad_id"), Some(&RawValue::from("a-new")));
    assert_eq!(unknown.get("category"), None);
    assert_eq!(num(unknown, "ad_impressions_7d"), None);
    assert_eq!(num(unknown, "advertiser_impressions_7d"), Some(4.0));
    assert_eq!((fetched.missing.users, fetched.missing.ads, fetched.missing.advertisers), (0, 1, 0));
    // Reading only the named attributes gives the same features for them.
    let wanted = Wanted::new([vec!["segment".into(), "age".into()], vec!["category".into()], vec![]]);
    let targeted = reader.clone().with_wanted(wanted).fetch("u1", &ads, day6).await.unwrap();
    assert_eq!(targeted.user, fetched.user);
    assert_eq!(targeted.ads[1], fetched.ads[1]);
    assert!(fetched.ads[0].record().get("status").is_some());
    let without_status: RawFeatures = fetched.ads[0]
        .record()
        .iter()
        .filter(|(name, _)| *name != "status")
        .map(|(name, value)| (name.to_string().into(), value.clone()))
        .collect();
    assert_eq!(targeted.ads[0].record(), without_status, "all but the unrequested `status`");

    // Day 8: one more impression. The day-0 events have left the 7-day window; the 1-hour
    // window sees the new impression.
    let mut updates = Updates::default();
    updates.impression(&prefix, &impression("i9", "u1", "a1", "v1", T0 + 8 * DAY_MS));
    assert_eq!(apply(&mut writer, 0, Some(10), 11, &updates).await, Outcome::Applied);
    let day8 = T0 + 8 * DAY_MS + 60_000;
    let fetched = reader.fetch("u1", &ads[..1], day8).await.unwrap();
    assert_eq!(num(&fetched.user, "user_impressions_7d"), Some(2.0));
    assert_eq!(num(&fetched.user, "user_clicks_7d"), Some(0.0));
    assert_eq!(num(&fetched.user, "user_impressions_1h"), Some(1.0));
}

#[tokio::test]
async fn snapshots_replace_attributes_and_old_ones_are_ignored() {
    let redis = TestRedis::new().await;
    let mut writer = Writer::connect(&redis.config).await.unwrap();
    let prefix = writer.prefix().to_string();
    let profile =
        |time: i64, attributes: RawFeatures| UserProfile { user_id: "u".into(), event_time_ms: time, attributes };
    let mut updates = Updates::default();
    updates.profile(
        &prefix,
        &profile(
            T0 + 10,
            RawFeatures::from([("device".into(), RawValue::from("ios")), ("vip".into(), RawValue::Num(1.0))]),
        ),
    );
    assert_eq!(apply(&mut writer, 0, None, 1, &updates).await, Outcome::Applied);
    // A newer snapshot without `vip` removes it; an older one (a late replay) changes nothing.
    let mut updates = Updates::default();
    updates.profile(&prefix, &profile(T0 + 20, RawFeatures::from([("device".into(), RawValue::from("android"))])));
    updates.profile(&prefix, &profile(T0 + 5, RawFeatures::from([("device".into(), RawValue::from("web"))])));
    assert_eq!(apply(&mut writer, 0, Some(1), 3, &updates).await, Outcome::Applied);
    let reader = Reader::connect(&redis.config).await.unwrap();
    let fetched = reader.fetch("u", &[], T0 + 30).await.unwrap();
    assert_eq!(fetched.user.get("device"), Some(&RawValue::from("android")));
    assert_eq!(fetched.user.get("vip"), None);
}

#[tokio::test]
async fn an_inactive_entity_reads_as_missing_never_stale() {
    let redis = TestRedis::new().await;
    let ttl_days = 8;
    let config = RedisConfig { entity_ttl_secs: ttl_days * 24 * 3600, cache_ttl_ms: 0, ..redis.config.clone() };
    let (_, prefix) = one_impression_applied(&config).await;
    let reader = Reader::connect(&config).await.unwrap();
    let ads = [AdRef { ad_id: "a", advertiser_id: "v" }];
    let within = reader.fetch("u", &ads, T0 + ttl_days as i64 * DAY_MS).await.unwrap();
    assert_eq!(within.missing.users, 0);
    // One millisecond past the TTL in event time: missing, although Redis still holds the hash.
    let past = reader.fetch("u", &ads, T0 + ttl_days as i64 * DAY_MS + 1).await.unwrap();
    assert_eq!((past.missing.users, past.missing.ads, past.missing.advertisers), (1, 1, 1));
    assert_eq!(past.user.len(), 1, "only the id: {:?}", past.user);
    assert!(!redis.keys().is_empty());

    // In wall-clock time Redis deletes the hash itself.
    let short = RedisConfig { entity_ttl_secs: 1, ..config.clone() };
    let mut writer = Writer::connect(&short).await.unwrap();
    let mut updates = Updates::default();
    updates.impression(&prefix, &impression("j", "u2", "a2", "v2", T0));
    assert_eq!(apply(&mut writer, 1, None, 1, &updates).await, Outcome::Applied);
    let key = format!("{prefix}u:u2");
    let mut connection = adrank_featurestore::online::connect(&config).await.unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut connection).await.unwrap();
    // Deleted between one TTL and one and an eighth after the write.
    assert!((1..=1_125).contains(&ttl), "PTTL {ttl}");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut connection).await.unwrap();
    assert!(!exists, "Redis expired the inactive user");

    // A write skips the expiry call while more than a TTL is left, and renews it once less is:
    // an entity written every 0.4 s outlives its 1 s TTL, and each write leaves it at least a TTL.
    let key = format!("{prefix}u:u3");
    for (i, next) in (2..7).enumerate() {
        let mut updates = Updates::default();
        updates.impression(&prefix, &impression(&format!("k{i}"), "u3", "a3", "v3", T0));
        assert_eq!(apply(&mut writer, 1, Some(next - 1), next, &updates).await, Outcome::Applied);
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut connection).await.unwrap();
        assert!((900..=1_125).contains(&ttl), "write {i}: PTTL {ttl}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

#[tokio::test]
async fn the_cache_serves_ads_and_advertisers_but_never_users() {
    let redis = TestRedis::new().await;
    let (mut writer, prefix) = one_impression_applied(&redis.config).await;
    let reader = Reader::connect(&RedisConfig { cache_ttl_ms: 60_000, ..redis.config.clone() }).await.unwrap();
    let ads: Vec<AdRef<'_>> = (0..3).map(|_| AdRef { ad_id: "a", advertiser_id: "v" }).collect();
    let first = reader.fetch("u", &ads, T0).await.unwrap();
    assert_eq!(first.cache_hits, 0);
    let mut updates = Updates::default();
    updates.impression(&prefix, &impression("j", "u", "a", "v", T0));
    assert_eq!(apply(&mut writer, 0, Some(1), 2, &updates).await, Outcome::Applied);
    let second = reader.fetch("u", &ads, T0).await.unwrap();
    assert_eq!(second.cache_hits, 2, "one ad and one advertiser, each read once per request");
    assert_eq!(num(&second.user, "user_impressions_7d"), Some(2.0), "users are always read");
    assert_eq!(num(&second.ads[2].record(), "ad_impressions_7d"), Some(1.0), "the cached ad is reused");
    // A cached hash read at a later time: its counters follow the read's time (the record is
    // kept per counter bucket, not for as long as the hash is cached), and back again.
    let later = reader.fetch("u", &ads, T0 + 61 * 60_000).await.unwrap();
    assert_eq!(later.cache_hits, 2);
    let ad = later.ads[0].record();
    assert_eq!(num(&ad, "ad_impressions_1h"), Some(0.0), "the hour window has moved past the impression");
    assert_eq!(num(&ad, "ad_impressions_1d"), Some(1.0));
    let again = reader.fetch("u", &ads, T0).await.unwrap();
    assert_eq!(num(&again.ads[1].record(), "ad_impressions_1h"), Some(1.0));
    let too_many: Vec<AdRef<'_>> = (0..1_001).map(|_| AdRef { ad_id: "a", advertiser_id: "v" }).collect();
    let error = reader.fetch("u", &too_many, T0).await.unwrap_err().to_string();
    assert!(error.contains("1001"), "{error}");
}

/// The apply script updates a ring in place while it stays put and rebuilds it when it moves
/// forward: random rounds of on-time, late and far-jumping events, read back after each round,
/// must count exactly what a brute-force sum over the events counts.
#[tokio::test]
async fn windowed_counters_match_a_brute_force_count_over_random_rounds() {
    use adrank_featurestore::online::layout::WINDOWS;
    let redis = TestRedis::new().await;
    let mut writer = Writer::connect(&redis.config).await.unwrap();
    let prefix = writer.prefix().to_string();
    let reader = Reader::connect(&RedisConfig { cache_ttl_ms: 0, ..redis.config.clone() }).await.unwrap();
    // A fixed-seed generator: the same rounds every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    const MINUTE: i64 = 60_000;
    let mut events: Vec<(i64, bool)> = Vec::new();
    let mut now = T0;
    for round in 0..120i64 {
        // Mostly minutes ahead, sometimes hours or days: the rings stay, move, or wrap.
        now += [0, 1, 3, 7, 25, 130, 500, 2_000, 9_000][next(9) as usize] * MINUTE;
        let mut updates = Updates::default();
        if round == 60 {
            // A backfill: one entity with thousands of buckets in one round.
            for k in 0..3_000 {
                let time = now - k * 10 * MINUTE;
                updates.impression(&prefix, &impression(&format!("b{k}"), "u", "a", "v", time));
                events.push((time, false));
            }
        }
        for e in 0..1 + next(4) {
            // Some events are late: minutes to days behind the newest.
            let lag = [0, 0, 0, 4, 45, 300, 1_500, 8_000][next(8) as usize] * MINUTE;
            let time = now - lag;
            let shown = impression(&format!("i{round}-{e}"), "u", "a", "v", time);
            updates.impression(&prefix, &shown);
            events.push((time, false));
            if next(3) == 0 {
                updates.click(&prefix, &click(&shown, time));
                events.push((time, true));
            }
        }
        let expected = (round > 0).then_some(round);
        assert_eq!(apply(&mut writer, 0, expected, round + 1, &updates).await, Outcome::Applied);
        for read_at in [now, now + next(3_000) as i64 * MINUTE] {
            let read = reader.fetch("u", &[], read_at).await.unwrap();
            for window in &WINDOWS {
                let current = read_at.div_euclid(window.bucket_ms);
                let counted = |clicks: bool| {
                    let in_window = |t: i64| {
                        (current - i64::from(window.buckets) + 1..=current).contains(&t.div_euclid(window.bucket_ms))
                    };
                    events.iter().filter(|&&(t, c)| c == clicks && in_window(t)).count() as f64
                };
                for (clicks, name) in [(false, "impressions"), (true, "clicks")] {
                    let feature = format!("user_{name}_{}", window.name);
                    assert_eq!(
                        num(&read.user, &feature),
                        Some(counted(clicks)),
                        "{feature} after round {round}, read {} min after the newest event",
                        (read_at - now) / MINUTE
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn a_cached_entity_past_half_its_ttl_is_served_and_refreshed_in_the_background() {
    let redis = TestRedis::new().await;
    let (mut writer, prefix) = one_impression_applied(&redis.config).await;
    let ttl = Duration::from_secs(4);
    let reader =
        Reader::connect(&RedisConfig { cache_ttl_ms: ttl.as_millis() as u64, ..redis.config.clone() }).await.unwrap();
    let ads = [AdRef { ad_id: "a", advertiser_id: "v" }];
    let started = std::time::Instant::now();
    assert_eq!(reader.fetch("u", &ads, T0).await.unwrap().cache_hits, 0);
    let mut updates = Updates::default();
    updates.impression(&prefix, &impression("j", "u", "a", "v", T0));
    assert_eq!(apply(&mut writer, 0, Some(1), 2, &updates).await, Outcome::Applied);

    // Past half the TTL: still the cached hash (the change is not visible yet), and a refresh
    // starts behind the read.
    tokio::time::sleep(ttl * 5 / 8).await;
    let stale = reader.fetch("u", &ads, T0).await.unwrap();
    assert_eq!(stale.cache_hits, 2);
    assert_eq!(num(&stale.ads[0].record(), "ad_impressions_7d"), Some(1.0), "served from the cache");
    // Before the TTL runs out, the cache holds the refreshed hash: reads hit it and see the
    // change, with no read of their own.
    let refreshed = loop {
        let read = reader.fetch("u", &ads, T0).await.unwrap();
        assert_eq!(read.cache_hits, 2, "the entry must not expire while it is refreshed");
        if num(&read.ads[0].record(), "ad_impressions_7d") == Some(2.0) {
            break read;
        }
        assert!(started.elapsed() < ttl * 15 / 16, "no background refresh landed before the TTL ran out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(num(&refreshed.ads[0].advertiser, "advertiser_impressions_7d"), Some(2.0));
}

#[tokio::test]
async fn a_fenced_partition_leaves_the_rest_of_the_round_applied() {
    let redis = TestRedis::new().await;
    let mut writer = Writer::connect(&redis.config).await.unwrap();
    let prefix = writer.prefix().to_string();
    let mut first = Updates::default();
    first.impression(&prefix, &impression("i1", "u", "a", "v", T0));
    let mut second = Updates::default();
    second.impression(&prefix, &impression("i2", "u", "a", "v", T0));
    // Partition 1 already moved on (another ingester): its batch must not count.
    assert_eq!(apply(&mut writer, 1, None, 7, &Updates::default()).await, Outcome::Applied);
    let batches = [
        PartitionBatch { topic: "t", partition: 0, expected: None, next: 5, updates: &first },
        PartitionBatch { topic: "t", partition: 1, expected: None, next: 9, updates: &second },
    ];
    let outcomes = writer.apply(&batches).await.unwrap();
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Fenced { current: Some(7) }]);
    assert_eq!(writer.watermarks(&[("t", 0), ("t", 1)]).await.unwrap(), [Some(5), Some(7)]);
    let reader = Reader::connect(&redis.config).await.unwrap();
    let fetched = reader.fetch("u", &[], T0).await.unwrap();
    assert_eq!(num(&fetched.user, "user_impressions_7d"), Some(1.0), "only the unfenced partition counted");
}

/// A key that holds something other than a record of this layout (a hash of an older layout, a
/// stray string) stops the whole round with an error naming it, before anything is written;
/// the read counts such an entity as missing.
#[tokio::test]
async fn a_value_of_another_layout_fails_the_round_whole_and_reads_as_missing() {
    let redis = TestRedis::new().await;
    let mut writer = Writer::connect(&redis.config).await.unwrap();
    let prefix = writer.prefix().to_string();
    let mut connection = adrank_featurestore::online::connect(&redis.config).await.unwrap();
    let ad_key = format!("{prefix}a:a");
    let advertiser_key = format!("{prefix}v:v");
    let _: () = redis::cmd("HSET").arg(&ad_key).arg("w1h").arg("x").query_async(&mut connection).await.unwrap();
    let _: () = redis::cmd("SET").arg(&advertiser_key).arg("not a record").query_async(&mut connection).await.unwrap();

    let mut updates = Updates::default();
    updates.impression(&prefix, &impression("i", "u", "a", "v", T0));
    let batch = PartitionBatch { topic: "t", partition: 0, expected: None, next: 1, updates: &updates };
    let error = writer.apply(&[batch]).await.unwrap_err().to_string();
    assert!(error.contains(&ad_key) || error.contains(&advertiser_key), "{error}");
    // Nothing of the round: no user record, no watermark.
    let user: Option<Vec<u8>> =
        redis::cmd("GET").arg(format!("{prefix}u:u")).query_async(&mut connection).await.unwrap();
    assert_eq!(user, None);
    assert_eq!(writer.watermarks(&[("t", 0)]).await.unwrap(), [None]);

    // Cleared, the same round applies.
    let _: () = redis::cmd("DEL").arg(&ad_key).query_async(&mut connection).await.unwrap();
    let batch = PartitionBatch { topic: "t", partition: 0, expected: None, next: 1, updates: &updates };
    let error = writer.apply(&[batch]).await.unwrap_err().to_string();
    assert!(error.contains(&advertiser_key) && error.contains("another layout"), "{error}");
    // The reader: the stray string is a missing advertiser, the ad a live one.
    let reader = Reader::connect(&RedisConfig { cache_ttl_ms: 0, ..redis.config.clone() }).await.unwrap();
    let _: () = redis::cmd("DEL").arg(&advertiser_key).query_async(&mut connection).await.unwrap();
    assert_eq!(apply(&mut writer, 0, None, 1, &updates).await, Outcome::Applied);
    let _: () = redis::cmd("SET").arg(&advertiser_key).arg("not a record").query_async(&mut connection).await.unwrap();
    let read = reader.fetch("u", &[AdRef { ad_id: "a", advertiser_id: "v" }], T0).await.unwrap();
    assert_eq!((read.missing.users, read.missing.ads, read.missing.advertisers), (0, 0, 1));
    assert_eq!(num(&read.ads[0].ad, "ad_impressions_1h"), Some(1.0));
}

/// A read of 301 entities hands every candidate its own ad and advertiser, in order, however
/// often it is repeated on the pooled connection.
#[tokio::test]
async fn a_big_read_keeps_every_entity_in_its_place() {
    let redis = TestRedis::new().await;
    let mut writer = Writer::connect(&redis.config).await.unwrap();
    let prefix = writer.prefix().to_string();
    let mut updates = Updates::default();
    // Ad k (advertiser k) has k + 1 impressions.
    for k in 0..150 {
        for i in 0..=k {
            let shown = impression(&format!("i{k}-{i}"), "u", &format!("a{k}"), &format!("v{k}"), T0 + i);
            updates.impression(&prefix, &shown);
        }
    }
    assert_eq!(apply(&mut writer, 0, None, 1, &updates).await, Outcome::Applied);
    let reader = Reader::connect(&RedisConfig { cache_ttl_ms: 0, ..redis.config.clone() }).await.unwrap();
    let ids: Vec<(String, String)> = (0..150).rev().map(|k| (format!("a{k}"), format!("v{k}"))).collect();
    let ads: Vec<AdRef<'_>> = ids.iter().map(|(ad, v)| AdRef { ad_id: ad, advertiser_id: v }).collect();
    for _ in 0..3 {
        let read = reader.fetch("u", &ads, T0 + 1_000).await.unwrap();
        assert_eq!(read.missing, Default::default());
        assert_eq!(num(&read.user, "user_impressions_1h"), Some((150 * 151 / 2) as f64));
        for (candidate, (ad, advertiser)) in read.ads.iter().zip(&ids) {
            let k: f64 = ad[1..].parse().unwrap();
            assert_eq!(candidate.ad.get("ad_id"), Some(&RawValue::from(ad.as_str())));
            assert_eq!(candidate.advertiser.get("advertiser_id"), Some(&RawValue::from(advertiser.as_str())));
            assert_eq!(num(&candidate.ad, "ad_impressions_1h"), Some(k + 1.0), "{ad}");
            assert_eq!(num(&candidate.advertiser, "advertiser_impressions_1h"), Some(k + 1.0), "{advertiser}");
        }
    }
}

/// A retried click (its click id again: in the same batch, a later one, another partition's)
/// counts once for its user, ad and advertiser; a distinct click still counts. The id's mark
/// lasts the writer's dedup span.
#[tokio::test]
async fn a_retried_click_counts_once() {
    let redis = TestRedis::new().await;
    let (writer, prefix) = one_impression_applied(&redis.config).await;
    let mut writer = writer.dedup_clicks_for(60_000);
    let shown = impression("i", "u", "a", "v", T0);
    let first = click(&shown, T0 + 1_000);
    let retried = |time: i64| Click { event_time_ms: time, ..first.clone() };
    let mut updates = Updates::default();
    updates.click(&prefix, &first);
    updates.click(&prefix, &retried(T0 + 1_500));
    updates.click(&prefix, &Click::on(&shown, "c-other".into(), T0 + 2_000));
    assert_eq!(apply(&mut writer, 0, Some(1), 4, &updates).await, Outcome::Applied);
    let mut later = Updates::default();
    later.click(&prefix, &retried(T0 + 3_600_000));
    let batches = [
        PartitionBatch { topic: "t", partition: 0, expected: Some(4), next: 5, updates: &later },
        PartitionBatch { topic: "t", partition: 1, expected: None, next: 1, updates: &later },
    ];
    assert_eq!(writer.apply(&batches).await.unwrap(), [Outcome::Applied, Outcome::Applied]);

    let reader = Reader::connect(&redis.config).await.unwrap();
    let fetched = reader.fetch("u", &[AdRef { ad_id: "a", advertiser_id: "v" }], T0 + 2 * 3_600_000).await.unwrap();
    let ad = &fetched.ads[0].record();
    let counted = [num(&fetched.user, "user_clicks_7d"), num(ad, "ad_clicks_7d"), num(ad, "advertiser_clicks_7d")];
    assert_eq!(counted, [Some(2.0); 3], "two distinct click ids");
    assert_eq!(num(&fetched.user, "user_impressions_7d"), Some(1.0));

    let mut connection = adrank_featurestore::online::connect(&redis.config).await.unwrap();
    let key = format!("{prefix}click:{}", first.click_id);
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut connection).await.unwrap();
    assert!((1..=60_000).contains(&ttl), "PTTL {ttl}");
}

/// The user's history with a category and an advertiser: impressions count by the category
/// they were served with, clicks by the one they carry, a retried click once; a read gives each
/// candidate its pairs (zero where there are none), and follows an ad whose category changed.
#[tokio::test]
async fn history_pairs_count_once_and_follow_their_candidates() {
    let redis = TestRedis::new().await;
    let mut writer = Writer::connect(&redis.config).await.unwrap();
    let prefix = writer.prefix().to_string();
    let catalog = |ad: &str, advertiser: &str, category: &str, time: i64| AdRecord {
        ad_id: ad.into(),
        advertiser_id: advertiser.into(),
        event_time_ms: time,
        status: AdStatus::Live,
        attributes: RawFeatures::from([("category".into(), RawValue::from(category))]),
    };
    let shown = |id: &str, ad: &str, advertiser: &str, category: &str| {
        let mut shown = impression(id, "u", ad, advertiser, T0 + 1_000);
        shown.features.insert("category", RawValue::from(category));
        shown
    };
    let mut updates = Updates::default();
    for (ad, advertiser, category) in [("a1", "v1", "shoes"), ("a2", "v2", "shoes"), ("a3", "v1", "books")] {
        updates.ad(&prefix, &catalog(ad, advertiser, category, T0));
    }
    let clicked = shown("i0", "a1", "v1", "shoes");
    for (i, (ad, advertiser, category)) in
        [("a1", "v1", "shoes"), ("a1", "v1", "shoes"), ("a3", "v1", "books")].iter().enumerate()
    {
        updates.impression(&prefix, &shown(&format!("i{}", i + 1), ad, advertiser, category));
    }
    updates.impression(&prefix, &clicked);
    let click = click(&clicked, T0 + 2_000);
    assert_eq!(click.category.as_deref(), Some("shoes"), "a click carries its impression's category");
    updates.click(&prefix, &click);
    updates.click(&prefix, &Click { event_time_ms: T0 + 3_000, ..click.clone() });
    // An impression served without a category counts for the advertiser's pair only.
    updates.impression(&prefix, &impression("i9", "u", "a-gone", "v1", T0 + 1_000));
    assert_eq!(apply(&mut writer, 0, None, 10, &updates).await, Outcome::Applied);

    let reader = Reader::connect(&RedisConfig { cache_ttl_ms: 0, ..redis.config.clone() }).await.unwrap();
    let ads = [
        AdRef { ad_id: "a1", advertiser_id: "v1" },
        AdRef { ad_id: "a2", advertiser_id: "v2" },
        AdRef { ad_id: "a3", advertiser_id: "v1" },
        AdRef { ad_id: "a-new", advertiser_id: "v1" },
    ];
    let history = |read: &adrank_featurestore::online::Fetched| -> Vec<[Option<f64>; 4]> {
        read.ads
            .iter()
            .map(|ad| {
                let r = ad.record();
                [
                    num(&r, "user_category_impressions_7d"),
                    num(&r, "user_category_clicks_7d"),
                    num(&r, "user_advertiser_impressions_7d"),
                    num(&r, "user_advertiser_clicks_7d"),
                ]
            })
            .collect()
    };
    let read = reader.fetch("u", &ads, T0 + 3_600_000).await.unwrap();
    assert_eq!(
        history(&read),
        [
            [Some(3.0), Some(1.0), Some(5.0), Some(1.0)],
            [Some(3.0), Some(1.0), Some(0.0), Some(0.0)],
            [Some(1.0), Some(0.0), Some(5.0), Some(1.0)],
            // An ad the store does not hold has no category: no category history.
            [Some(0.0), Some(0.0), Some(5.0), Some(1.0)],
        ]
    );
    assert_eq!(num(&read.ads[0].record(), "user_category_impressions_1d"), Some(3.0));
    assert_eq!(read.missing.ads, 1, "pairs never count as missing");
    let stranger = reader.fetch("u2", &ads[..1], T0 + 3_600_000).await.unwrap();
    assert_eq!(history(&stranger), [[Some(0.0); 4]]);

    // a2 moves to books: the reader remembered shoes, reads the ad, and reads books instead.
    let mut updates = Updates::default();
    updates.ad(&prefix, &catalog("a2", "v2", "books", T0 + 5_000));
    assert_eq!(apply(&mut writer, 0, Some(10), 11, &updates).await, Outcome::Applied);
    let read = reader.fetch("u", &ads[1..2], T0 + 3_600_000).await.unwrap();
    assert_eq!(history(&read), [[Some(1.0), Some(0.0), Some(0.0), Some(0.0)]]);

    // A reader for a spec without history features reads none.
    let spec = adrank_contracts::spec::FeatureSpec::parse(
        "[[feature]]\nname = \"ad_id\"\nsource = \"ad\"\ntype = \"categorical\"\ntransform = [{ op = \"hash\", buckets = 8 }]\n",
        "a test",
    )
    .unwrap();
    let plain = reader.clone().with_wanted(Wanted::from_spec(&spec));
    let read = plain.fetch("u", &ads[..1], T0 + 3_600_000).await.unwrap();
    assert_eq!(history(&read), [[None; 4]]);

    // A user's history is one hash; a key of another type there stops a round before anything
    // of it is written.
    let mut connection = adrank_featurestore::online::connect(&redis.config).await.unwrap();
    let stray = format!("{prefix}h:u3");
    let _: () = redis::cmd("SET").arg(&stray).arg("not a hash").query_async(&mut connection).await.unwrap();
    let mut updates = Updates::default();
    updates.impression(&prefix, &impression("j", "u3", "a1", "v1", T0));
    let batch = PartitionBatch { topic: "t", partition: 1, expected: None, next: 1, updates: &updates };
    let error = writer.apply(&[batch]).await.unwrap_err().to_string();
    assert!(error.contains(&stray), "{error}");
    let user: Option<Vec<u8>> =
        redis::cmd("GET").arg(format!("{prefix}u:u3")).query_async(&mut connection).await.unwrap();
    assert_eq!(user, None);
    assert_eq!(writer.watermarks(&[("t", 1)]).await.unwrap(), [None]);
    // The history hash expires with its user's activity, like the records.
    let ttl: i64 = redis::cmd("PTTL").arg(format!("{prefix}h:u")).query_async(&mut connection).await.unwrap();
    assert!(ttl > 0, "PTTL {ttl}");
}

/// A round cut into several batches of one partition, each expecting what the one before it
/// leaves, applies in order across script calls; when the first is fenced, so is the rest.
#[tokio::test]
async fn a_partitions_batches_chain_across_script_calls() {
    let redis = TestRedis::new().await;
    let mut writer = Writer::connect(&redis.config).await.unwrap().records_per_call(3);
    let prefix = writer.prefix().to_string();
    let batch_of = |id: &str| {
        let mut updates = Updates::default();
        updates.impression(&prefix, &impression(id, "u", "a", "v", T0));
        updates
    };
    let (first, second, third) = (batch_of("i1"), batch_of("i2"), batch_of("i3"));
    let batches = [
        PartitionBatch { topic: "t", partition: 0, expected: None, next: 1, updates: &first },
        PartitionBatch { topic: "t", partition: 0, expected: Some(1), next: 2, updates: &second },
        PartitionBatch { topic: "t", partition: 1, expected: None, next: 1, updates: &third },
    ];
    assert_eq!(writer.apply(&batches).await.unwrap(), vec![Outcome::Applied; 3]);
    let reader = Reader::connect(&redis.config).await.unwrap();
    let fetched = reader.fetch("u", &[], T0 + 1_000).await.unwrap();
    assert_eq!(num(&fetched.user, "user_impressions_7d"), Some(3.0));

    // Partition 0 holds 2: a replay from the start is fenced, and the batch behind it with it.
    let replay = [
        PartitionBatch { topic: "t", partition: 0, expected: None, next: 1, updates: &first },
        PartitionBatch { topic: "t", partition: 0, expected: Some(1), next: 2, updates: &second },
    ];
    let fenced = Outcome::Fenced { current: Some(2) };
    assert_eq!(writer.apply(&replay).await.unwrap(), [fenced.clone(), fenced]);
    let fetched = reader.fetch("u", &[], T0 + 1_000).await.unwrap();
    assert_eq!(num(&fetched.user, "user_impressions_7d"), Some(3.0));
}
