use adrank_contracts::events::Event as _;

use super::*;
use crate::oracle::oracle_quality;

fn small() -> WorldConfig {
    WorldConfig { users: 5_000, advertisers: 200, ads: 2_000, requests_per_hour: 400, ..WorldConfig::default() }
}

/// Runs `requests` requests under the baseline policy.
fn run(world: &mut World, requests: usize) -> Served {
    let mut all = Served::default();
    for _ in 0..requests {
        let served = world.serve_baseline();
        all.impressions.extend(served.impressions);
        all.clicks.extend(served.clicks);
        all.situations.extend(served.situations);
    }
    all
}

fn bytes(served: &Served) -> Vec<u8> {
    let mut out = Vec::new();
    for i in &served.impressions {
        out.extend(i.encode());
    }
    for c in &served.clicks {
        out.extend(c.encode());
    }
    out
}

#[test]
fn same_seed_same_events_byte_for_byte() {
    let a = bytes(&run(&mut World::new(small()), 3_000));
    let b = bytes(&run(&mut World::new(small()), 3_000));
    assert_eq!(a, b);
    let c = bytes(&run(&mut World::new(WorldConfig { seed: 43, ..small() }), 3_000));
    assert_ne!(a, c);
}

#[test]
fn requests_have_distinct_live_candidates_and_match_the_api_shape() {
    let mut world = World::new(small());
    for _ in 0..500 {
        let request = world.next_request();
        assert_eq!(request.candidates.len(), 200);
        let mut sorted = request.candidates.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 200, "candidates are distinct");
        assert!(request.candidates.iter().all(|&ad| world.catalog.is_live(ad)), "only live ads");
        let favourites = &world.favourites[world.users[request.user as usize].segment as usize];
        let relevant =
            request.candidates.iter().filter(|&&ad| favourites.contains(&world.catalog.ad(ad).category)).count();
        assert!(relevant >= 100, "at least the relevant half comes from favourite categories ({relevant})");
        world.rank_request(&request).validate(1_000).expect("the world's requests pass serving's rules");
        let json = serde_json::to_vec(&world.rank_request(&request)).unwrap();
        let back: adrank_contracts::request::RankRequest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, world.rank_request(&request));
    }
}

#[test]
fn events_follow_the_contract() {
    let mut world = World::new(small());
    let served = run(&mut world, 500);
    assert_eq!(served.impressions.len(), 500 * 5);
    for impression in &served.impressions {
        let decoded = adrank_contracts::events::Impression::decode(&impression.encode()).unwrap();
        assert_eq!(&decoded, impression);
    }
    for click in &served.clicks {
        adrank_contracts::events::Click::decode(&click.encode()).unwrap();
        assert!(served.impressions.iter().any(|i| i.impression_id == click.impression_id && i.key() == click.key()));
    }
    // The logged features are the ones the shipped feature spec reads.
    let spec = adrank_contracts::spec::FeatureSpec::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/features.toml"
    )))
    .unwrap();
    for feature in &spec.features {
        // Crosses read other features; the position is the log's, not a logged feature.
        if matches!(feature.source, adrank_contracts::spec::Source::Cross | adrank_contracts::spec::Source::Position) {
            continue;
        }
        let mut names = Vec::new();
        if feature.kind != adrank_contracts::spec::Kind::Rate {
            names.push(feature.input_name());
        }
        names.extend(feature.clicks.as_deref());
        names.extend(feature.impressions.as_deref());
        for name in names {
            assert!(served.impressions[0].features.contains_key(name), "the world does not log `{name}`");
        }
    }
}

#[test]
fn mean_ctr_and_position_curve_match_the_config() {
    let config = small();
    let mut world = World::new(config.clone());
    let served = run(&mut world, 20_000);
    let quality = oracle_quality(&served.impressions, &served.clicks).unwrap();
    assert!((quality.ctr - config.mean_ctr).abs() < 0.15 * config.mean_ctr, "observed CTR {}", quality.ctr);
    assert!(
        (quality.mean_prediction - config.mean_ctr).abs() < 0.1 * config.mean_ctr,
        "mean p {}",
        quality.mean_prediction
    );

    // Observed clicks per position agree with the truth (within 4 standard errors) …
    let clicked: std::collections::HashSet<&str> = served.clicks.iter().map(|c| c.impression_id.as_str()).collect();
    for position in 0..5u16 {
        let at: Vec<&Impression> = served.impressions.iter().filter(|i| i.position == position).collect();
        let expected: f64 = at.iter().map(|i| i.oracle_p.unwrap()).sum();
        let observed = at.iter().filter(|i| clicked.contains(i.impression_id.as_str())).count() as f64;
        assert!((observed - expected).abs() < 4.0 * expected.sqrt(), "position {position}: {observed} vs {expected}");
    }
    // … and the truth's position effect is the configured one: moving the same ad from the top to
    // position k scales its odds by (1 + k)^-decay.
    let truth = world.truth();
    for k in 1..5u32 {
        let ratios: Vec<f64> = served
            .situations
            .iter()
            .take(2_000)
            .map(|s| {
                let odds = |p: f64| p / (1.0 - p);
                odds(truth.p(&Situation { position: k, ..*s })) / odds(truth.p(&Situation { position: 0, ..*s }))
            })
            .collect();
        let expected = (1.0 + f64::from(k)).powf(-config.position_decay);
        assert!(ratios.iter().all(|r| (r - expected).abs() < 1e-9), "position {k}");
    }
}

#[test]
fn cold_start_ads_exist_every_hour() {
    let mut world = World::new(small());
    for hour in 0..72 {
        for _ in 0..world.config().requests_per_hour {
            world.next_request();
        }
        assert!(world.young_live_ads(24 * HOUR_MS) > 0, "no ad younger than a day at hour {hour}");
        assert_eq!(world.catalog.live().len(), 2_000, "the live catalog keeps its size");
    }
    assert!(!world.take_catalog_changes().is_empty());
}

#[test]
fn drift_makes_old_truth_worse() {
    let mut world = World::new(WorldConfig { requests_per_hour: 200, ..small() });
    let day0 = world.truth().clone();
    for _ in 0..7 * 24 * 200 {
        world.next_request();
    }
    let served = run(&mut world, 20_000);
    let known = |s: &&Situation| s.ad < day0.ads();
    let clicked: std::collections::HashSet<&str> = served.clicks.iter().map(|c| c.impression_id.as_str()).collect();
    let labels: Vec<bool> = served.impressions.iter().map(|i| clicked.contains(i.impression_id.as_str())).collect();
    let pairs = |truth: &Truth| -> Vec<(f64, bool)> {
        served.situations.iter().zip(&labels).filter(|(s, _)| known(s)).map(|(s, y)| (truth.p(s), *y)).collect()
    };
    let now = adrank_contracts::eval::quality(&pairs(world.truth())).unwrap();
    let old = adrank_contracts::eval::quality(&pairs(&day0)).unwrap();
    assert!(now.examples > 20_000, "enough day-7 impressions of ads that existed on day 0");
    assert!(old.log_loss > now.log_loss * 1.005, "day-0 truth {} vs day-7 truth {}", old.log_loss, now.log_loss);
    // Drift moves the truth, not the click-through rate.
    let mean_p = served.impressions.iter().map(|i| i.oracle_p.unwrap()).sum::<f64>() / served.impressions.len() as f64;
    let configured = world.config().mean_ctr;
    assert!((mean_p - configured).abs() < 0.15 * configured, "mean p {mean_p} on day 7, configured {configured}");
}
