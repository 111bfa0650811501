//! The ingester in-process against a real tansu broker and the real Redis: dead letters,
//! training examples that keep the features logged at serving time, and partitions lost to
//! another member's Redis apply or log commit, read again even after they went quiet.

use std::time::Duration;

use adrank_contracts::{
    events::{Click, Event, Impression, RawFeatures, RawValue, UserProfile},
    training_log::{Checkpoint, CommitRequest, TrainingLog},
};
use adrank_featurestore::{
    IngestConfig,
    ingest::{Ingester, RunOptions, Totals},
    kafka::{self, admin},
    online::{Reader, Writer, layout},
};
use adrank_testkit::{broker::TestBroker, redis::TestRedis};
use rdkafka::{
    Message as _,
    consumer::{Consumer as _, StreamConsumer},
    message::Headers as _,
    producer::{FutureProducer, FutureRecord},
};

/// 2026-01-01T00:00Z.
const T0: i64 = 1_767_225_600_000;

pub(crate) struct Fixture {
    pub(crate) broker: TestBroker,
    pub(crate) redis: TestRedis,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ingest: IngestConfig,
    producer: FutureProducer,
}

impl Fixture {
    pub(crate) async fn new() -> Self {
        // The sqlite engine: exact watermarks and a group join in about a second.
        let broker = TestBroker::start_persistent().await;
        admin::ensure_topics(&broker.config).await.expect("topics are created");
        let redis = TestRedis::new().await;
        let dir = tempfile::tempdir().unwrap();
        let ingest = IngestConfig {
            training_log: dir.path().join("log").display().to_string(),
            attribution_window_secs: 60,
            allowed_lateness_secs: 30,
            max_batch_wait_ms: 20,
            log_commit_interval_ms: 200,
            session_timeout_ms: 6_000,
            ..IngestConfig::default()
        };
        let producer = kafka::producer_config(&broker.config).set("acks", "all").create().unwrap();
        Self { broker, redis, dir, ingest, producer }
    }

    pub(crate) async fn send(&self, topic: &str, key: Option<&str>, payload: Option<&[u8]>) {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        self.producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("the broker takes it");
    }

    async fn event(&self, topic: &str, event: &impl Event) {
        self.send(topic, Some(event.key()), Some(&event.encode())).await;
    }

    async fn ingest_until_idle(&self) -> Totals {
        let ingester = Ingester::new(&self.broker.config, &self.redis.config, &self.ingest).await.unwrap();
        let run = ingester.run(RunOptions { exit_when_idle: Some(Duration::from_secs(2)) }, std::future::pending());
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("the ingester did not go idle; broker log:\n{}", self.broker.log_text()))
            .expect("the ingester runs")
    }
}

fn impression(id: &str, user: &str, time: i64, features: RawFeatures) -> Impression {
    let mut impression = Impression::example(id, features);
    impression.user_id = user.into();
    impression.event_time_ms = time;
    impression
}

fn click(impression: &Impression, time: i64) -> Click {
    Click::on(impression, format!("c-{}-{time}", impression.impression_id), time)
}

/// A bad record: topic, key, payload and the kind of refusal it should get.
type BadRecord<'a> = (&'a str, Option<&'a str>, Option<Vec<u8>>, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_record_is_dead_lettered_with_its_reason() {
    let fixture = Fixture::new().await;
    let topics = &fixture.broker.config.topics;
    let good = impression("i-good", "u1", T0, RawFeatures::new());
    let mut negative_time = good.clone();
    negative_time.impression_id = "i-neg".into();
    negative_time.event_time_ms = -5;
    // A day ahead of the clock: a click like it closed every waiting window of its partition.
    let tomorrow = adrank_contracts::events::now_ms() + 86_400_000;
    let future = Impression { impression_id: "i-future".into(), event_time_ms: tomorrow, ..good.clone() };
    let future_click = Click::on(&good, "c-future".into(), tomorrow).encode();
    // A second impression under an id the join holds: it would take the first one's clicks.
    let original = Impression { impression_id: "i-dup".into(), ..good.clone() };
    let copy = Impression { impression_id: "i-dup".into(), ad_id: "a-other".into(), ..good.clone() };
    fixture.event(&topics.impressions.name, &original).await;
    let bad: Vec<BadRecord<'_>> = vec![
        (&topics.impressions.name, Some("i-dup"), Some(copy.encode()), "duplicate"),
        (&topics.impressions.name, Some("i-future"), Some(future.encode()), "future"),
        (&topics.clicks.name, Some("i-good"), Some(future_click), "future"),
        // A positional array of a click's fields: serde's derive read it as a valid click.
        (&topics.clicks.name, Some("i-good"), Some(br#"["c-1","i-good",1,"u1","a","v"]"#.to_vec()), "schema"),
        (&topics.impressions.name, Some("k"), Some(b"{not json".to_vec()), "json"),
        (&topics.impressions.name, Some("k"), Some(br#"{"impression_id": 5}"#.to_vec()), "schema"),
        (&topics.impressions.name, Some("i-neg"), Some(negative_time.encode()), "rule"),
        (&topics.impressions.name, Some("not-its-key"), Some(good.encode()), "key"),
        (&topics.impressions.name, Some("k"), None, "empty"),
        (&topics.clicks.name, Some("i-good"), Some(br#"{"click_id":"c","oracle_p":0.1}"#.to_vec()), "schema"),
        (
            &topics.users.name,
            Some("u1"),
            Some(br#"{"user_id":"u1","event_time_ms":1,"attributes":{"oracle_p":0.5}}"#.to_vec()),
            "rule",
        ),
        (
            &topics.ads.name,
            Some("a1"),
            Some(br#"{"ad_id":"a1","advertiser_id":"v","event_time_ms":1,"status":"paused","attributes":{}}"#.to_vec()),
            "schema",
        ),
    ];
    for (topic, key, payload, _) in &bad {
        fixture.send(topic, *key, payload.as_deref()).await;
    }
    fixture.event(&topics.impressions.name, &good).await;
    let profile = UserProfile {
        user_id: "u1".into(),
        event_time_ms: T0,
        attributes: RawFeatures::from([("segment".into(), RawValue::from("s1"))]),
    };
    fixture.event(&topics.users.name, &profile).await;

    let totals = fixture.ingest_until_idle().await;
    assert_eq!(totals.dead_letters, bad.len() as u64, "{totals:?}");
    // The good one after the bad ones, and both of i-dup: the online counters count what was
    // shown; only the training log refuses the copy.
    assert_eq!(totals.applied[0], 3, "{totals:?}");
    assert_eq!(totals.applied[2], 1, "{totals:?}");

    // The dead-letter topic holds each bad record with its payload, source and reason.
    let consumer: StreamConsumer = kafka::client_config(&fixture.broker.config)
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[&topics.dead_letter.name]).unwrap();
    let mut letters = Vec::new();
    while letters.len() < bad.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} dead letters arrived", letters.len(), bad.len()))
            .unwrap();
        let header = |name: &str| {
            message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).to_string())
                .unwrap_or_default()
        };
        letters.push((
            header("adrank-source-topic"),
            message.payload().unwrap_or_default().to_vec(),
            header("adrank-reason"),
            header("adrank-field"),
            String::from_utf8_lossy(message.key().unwrap_or_default()).to_string(),
        ));
    }
    for (topic, _, payload, kind) in &bad {
        let payload = payload.clone().unwrap_or_default();
        let letter = letters
            .iter()
            .find(|(t, p, ..)| t == topic && *p == payload)
            .unwrap_or_else(|| panic!("no dead letter for the {kind} case on {topic}: {letters:?}"));
        assert!(!letter.2.is_empty(), "a reason for the {kind} case");
        assert!(letter.4.starts_with(&format!("{topic}:")), "keyed by source position: {}", letter.4);
        if *kind == "future" {
            assert!(letter.2.contains("ahead of the receiving clock"), "{letter:?}");
        }
        if *kind == "duplicate" {
            assert!(letter.2.contains("`i-dup` is the id of an earlier impression"), "{letter:?}");
        }
    }
    let reasons: Vec<String> = letters.iter().map(|l| format!("{} {}", l.3, l.2)).collect();
    let joined = reasons.join("\n");
    for expected in
        ["not valid JSON", "event_time_ms", "not-its-key", "no payload", "oracle_p", "paused", "expected a JSON object"]
    {
        assert!(joined.contains(expected), "no reason mentions `{expected}`:\n{joined}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_keep_the_features_logged_at_serving_time() {
    let fixture = Fixture::new().await;
    let topics = &fixture.broker.config.topics;
    let profile = |time: i64, segment: &str| UserProfile {
        user_id: "u1".into(),
        event_time_ms: time,
        attributes: RawFeatures::from([("segment".into(), RawValue::from(segment))]),
    };
    fixture.event(&topics.users.name, &profile(T0, "s1")).await;
    let logged = RawFeatures::from([
        ("segment".into(), RawValue::from("s1")),
        ("user_impressions_7d".into(), RawValue::Num(0.0)),
    ]);
    let shown = impression("i1", "u1", T0 + 1_000, logged.clone());
    fixture.event(&topics.impressions.name, &shown).await;
    // The user's profile changes after the impression was served, before its click.
    fixture.event(&topics.users.name, &profile(T0 + 2_000, "s2")).await;
    fixture.event(&topics.clicks.name, &click(&shown, T0 + 5_000)).await;
    // A click long after the window (in i1's own partition, being keyed by i1) moves the click
    // watermark past the window's end: the window closes, and the click itself is late.
    fixture.event(&topics.clicks.name, &click(&shown, T0 + 200_000)).await;

    let totals = fixture.ingest_until_idle().await;
    assert_eq!(totals.applied, [1, 2, 2, 0], "{totals:?}");
    assert_eq!(totals.late_clicks, 1, "{totals:?}");
    let log = TrainingLog::open(&fixture.ingest.training_log).unwrap();
    let examples = log.read(&log.all_commits().await.unwrap()).await.unwrap();
    let i1 = examples.iter().find(|e| e.impression.impression_id == "i1").expect("i1's window closed");
    assert!(i1.label());
    assert_eq!(i1.first_click_ms, Some(T0 + 5_000));
    assert_eq!(i1.impression.features, logged, "the features serving logged, not today's profile");
    let reader = Reader::connect(&fixture.redis.config).await.unwrap();
    let now = reader.fetch("u1", &[], T0 + 300_000).await.unwrap();
    assert_eq!(now.user.get("segment"), Some(&RawValue::from("s2")), "the online store moved on");
    assert!(fixture.dir.path().join("log").is_dir());
}

/// A client's retried click (the same click id) counts once in the online counters and in the
/// example's click count, also when the retry comes after a restart: the first ingester stops
/// with the impression's window still open, the second replays it from the log's checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_click_counts_once_across_a_restart() {
    let fixture = Fixture::new().await;
    let topics = &fixture.broker.config.topics;
    let shown = impression("i1", "u1", T0, RawFeatures::new());
    let first = click(&shown, T0 + 1_000);
    fixture.event(&topics.impressions.name, &shown).await;
    fixture.event(&topics.clicks.name, &first).await;
    fixture.event(&topics.clicks.name, &Click { event_time_ms: T0 + 1_200, ..first.clone() }).await;
    let totals = fixture.ingest_until_idle().await;
    assert_eq!(totals.examples, 0, "the window is still open: {totals:?}");

    fixture.event(&topics.clicks.name, &Click { event_time_ms: T0 + 2_000, ..first.clone() }).await;
    fixture.event(&topics.clicks.name, &click(&shown, T0 + 3_000)).await;
    // Past the window and its lateness: closes i1's window (and is late itself).
    fixture.event(&topics.clicks.name, &click(&shown, T0 + 200_000)).await;
    let totals = fixture.ingest_until_idle().await;
    assert_eq!(totals.examples, 1, "{totals:?}");

    let log = TrainingLog::open(&fixture.ingest.training_log).unwrap();
    let examples = log.read(&log.all_commits().await.unwrap()).await.unwrap();
    assert_eq!(examples.len(), 1);
    assert_eq!(examples[0].clicks, 2, "the first click and the distinct one, each once");
    let reader = Reader::connect(&fixture.redis.config).await.unwrap();
    let now = reader.fetch("u1", &[], T0 + 300_000).await.unwrap();
    // The first click, the distinct one and the late one: three click ids.
    assert_eq!(now.user.get("user_clicks_1h"), Some(&RawValue::Num(3.0)));
}

/// Another member's log commit can land where this member's was to go: a member the group took
/// the partition from finishes the commit it had started after this one loaded the partition.
/// This member's commit then loses, and it must read the partition again from the winner's
/// checkpoint, even when the partition has gone quiet and no new message would bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_commit_lost_to_another_member_is_read_again_from_the_winners_checkpoint() {
    let mut fixture = Fixture::new().await;
    // No commit before the one at idle, so the other member's commits come first.
    fixture.ingest.log_commit_interval_ms = 3_600_000;
    fixture.ingest.log_commit_examples = usize::MAX;
    let topics = fixture.broker.config.topics.clone();
    let shown: Vec<Impression> =
        (0..20).map(|i| impression(&format!("i{i}"), "u1", T0 + i * 1_000, RawFeatures::default())).collect();
    for (i, shown) in shown.iter().enumerate() {
        fixture.event(&topics.impressions.name, shown).await;
        if i % 2 == 0 {
            fixture.event(&topics.clicks.name, &click(shown, shown.event_time_ms + 5_000)).await;
        }
    }
    // Clicks far past every window close them in each impression's partition (late clicks).
    for shown in &shown {
        fixture.event(&topics.clicks.name, &click(shown, T0 + 300_000)).await;
    }

    let ingester = Ingester::new(&fixture.broker.config, &fixture.redis.config, &fixture.ingest).await.unwrap();
    let run =
        tokio::spawn(ingester.run(RunOptions { exit_when_idle: Some(Duration::from_secs(2)) }, std::future::pending()));
    // Once everything is applied, and before the ingester's commit at idle, another member
    // commits every partition's first sequence number: no examples, everything still to read.
    let mut writer = Writer::connect(&fixture.redis.config).await.unwrap();
    let partitions: Vec<i32> = (0..topics.impressions.partitions.get() as i32).collect();
    let names: Vec<(&str, i32)> = partitions.iter().map(|&p| (topics.impressions.name.as_str(), p)).collect();
    let started = std::time::Instant::now();
    loop {
        let applied: i64 = writer.watermarks(&names).await.unwrap().into_iter().flatten().sum();
        if applied == shown.len() as i64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "applied {applied} impressions");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = TrainingLog::open(&fixture.ingest.training_log).unwrap();
    for &partition in &partitions {
        let request =
            CommitRequest { partition, seq: 0, checkpoint: Checkpoint::default(), late_clicks: 0, orphan_clicks: 0 };
        log.commit(request, Vec::new()).await.unwrap();
    }

    let totals =
        tokio::time::timeout(Duration::from_secs(60), run).await.expect("the ingester goes idle").unwrap().unwrap();
    assert_eq!(totals.applied[0], 20, "Redis applied each impression once: {totals:?}");
    let commits = log.all_commits().await.unwrap();
    let mut examples = log.read(&commits).await.unwrap();
    examples.sort_by_key(|e| e.impression.event_time_ms);
    let ids: Vec<&str> = examples.iter().map(|e| e.impression.impression_id.as_str()).collect();
    let expected: Vec<&str> = shown.iter().map(|i| i.impression_id.as_str()).collect();
    assert_eq!(ids, expected, "every example once, after the other member's empty commits: {commits:#?}");
    for (i, example) in examples.iter().enumerate() {
        assert_eq!(example.label(), i % 2 == 0, "{example:?}");
    }
}

/// A fenced partition (another member moved its watermark) is loaded again from what Redis
/// holds and read again from there, even when the fenced batch held its last message: nothing
/// new would arrive to bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_partition_that_goes_quiet_is_still_applied() {
    let fixture = Fixture::new().await;
    let topics = fixture.broker.config.topics.clone();
    let profile = |time: i64, segment: &str| UserProfile {
        user_id: "u1".into(),
        event_time_ms: time,
        attributes: RawFeatures::from([("segment".into(), RawValue::from(segment))]),
    };
    fixture.event(&topics.users.name, &profile(T0, "s1")).await;
    let ingester = Ingester::new(&fixture.broker.config, &fixture.redis.config, &fixture.ingest).await.unwrap();
    let run =
        tokio::spawn(ingester.run(RunOptions { exit_when_idle: Some(Duration::from_secs(3)) }, std::future::pending()));

    // Once the profile is applied, another member's view of its partition: nothing applied.
    let mut writer = Writer::connect(&fixture.redis.config).await.unwrap();
    let names: Vec<(&str, i32)> =
        (0..topics.users.partitions.get() as i32).map(|p| (topics.users.name.as_str(), p)).collect();
    let started = std::time::Instant::now();
    let partition = loop {
        let applied = writer.watermarks(&names).await.unwrap();
        if let Some(p) = applied.iter().position(|w| *w == Some(1)) {
            break p as i32;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the profile was never applied: {applied:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut redis = redis::Client::open(fixture.redis.config.url.as_str()).unwrap().get_connection().unwrap();
    let () = redis::cmd("HSET")
        .arg(layout::offsets_key(writer.prefix()))
        .arg(layout::offsets_field(&topics.users.name, partition))
        .arg(0)
        .query(&mut redis)
        .unwrap();
    // The partition's last message: its batch is fenced.
    fixture.event(&topics.users.name, &profile(T0 + 1_000, "s2")).await;

    let totals =
        tokio::time::timeout(Duration::from_secs(60), run).await.expect("the ingester goes idle").unwrap().unwrap();
    assert_eq!(totals.fenced, 1, "{totals:?}");
    assert_eq!(writer.watermarks(&names[partition as usize..][..1]).await.unwrap(), [Some(2)]);
    let reader = Reader::connect(&fixture.redis.config).await.unwrap();
    let now = reader.fetch("u1", &[], T0 + 2_000).await.unwrap();
    assert_eq!(now.user.get("segment"), Some(&RawValue::from("s2")), "the fenced batch's profile, read again");
}
