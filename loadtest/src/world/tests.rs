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

/// Mean squared latent component over every user, and over the users' own deviations.
fn user_variances(world: &World) -> (f64, f64) {
    let truth = world.truth();
    let n = truth.user_vector.len() as f64;
    let whole = truth.user_vector.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / n;
    let own = (0..world.users.len())
        .map(|u| truth.user_taste().deviation(u).0.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>())
        .sum::<f64>()
        / n;
    (whole, own)
}

#[test]
fn taste_is_mostly_shared_by_attributes_and_keeps_its_spread_as_it_drifts() {
    let config = WorldConfig { requests_per_hour: 50, ..small() };
    let mut world = World::new(config.clone());
    let std = Truth::max_vector_step(config.latent_dim);
    let (whole, own) = user_variances(&world);
    // A user's own part has the configured share of a wholly individual vector's variance; the
    // composed vector keeps about that variance (the 3 x 8 device components are few draws, so
    // the realised shared part strays from its expectation by up to ~30%).
    assert!((own / std.powi(2) - config.user_individual_share).abs() < 0.02, "own share {}", own / std.powi(2));
    assert!((whole / std.powi(2) - 1.0).abs() < 0.4, "variance {whole} vs {}", std.powi(2));
    // Two users with the same segment, country and device share everything but their own parts.
    let users = &world.users;
    let twins = (1..users.len())
        .flat_map(|b| (0..b).map(move |a| (a, b)))
        .find(|&(a, b)| {
            (users[a].segment, users[a].country, users[a].device)
                == (users[b].segment, users[b].country, users[b].device)
        })
        .expect("5,000 users have two with the same attributes");
    let truth = world.truth();
    let dim = config.latent_dim as usize;
    let shared = |u: usize| -> Vec<f32> {
        let (own, _) = truth.user_taste().deviation(u);
        truth.user_vector[u * dim..(u + 1) * dim].iter().zip(own).map(|(x, o)| x - o).collect()
    };
    let (a, b) = (shared(twins.0), shared(twins.1));
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5), "{a:?} vs {b:?}");
    assert!(a.iter().any(|x| x.abs() > 0.01), "the shared part is not empty: {a:?}");

    // A month of drift walks the shared components and the deviations without spreading them
    // (an unbounded walk would add 30 steps' variance: +85%).
    for _ in 0..30 * 24 * 50 {
        world.next_request();
    }
    let (after, own_after) = user_variances(&world);
    assert!((after / whole - 1.0).abs() < 0.3, "variance {whole} -> {after}");
    assert!((own_after / own - 1.0).abs() < 0.1, "own part's variance {own} -> {own_after}");
}

#[test]
fn the_learnable_ceiling_removes_only_individual_taste() {
    let serve = |individual_share: f64| {
        let mut world = World::new(WorldConfig {
            user_individual_share: individual_share,
            ad_individual_share: individual_share,
            ..small()
        });
        let served = run(&mut world, 300);
        let terms: Vec<_> = served.situations.iter().map(|s| world.truth().entity_terms(s)).collect();
        let ceiling: Vec<f64> = served.situations.iter().map(|s| world.truth().ceiling_p(s)).collect();
        (served, terms, ceiling)
    };
    // Every taste individual (the world before shared taste): what users alone carry is their
    // bias and the whole dot product; ads, their bias (their vectors meet no shared user part).
    let (_, terms, _) = serve(1.0);
    for t in &terms {
        assert!((t.user_individual - (t.user_bias + t.dot)).abs() < 1e-5, "{t:?}");
        assert!((t.ad_individual - t.ad_bias).abs() < 1e-6, "{t:?}");
    }
    // Every taste shared: the ceiling is the truth.
    let (served, terms, ceiling) = serve(0.0);
    for ((t, p), i) in terms.iter().zip(&ceiling).zip(&served.impressions) {
        assert_eq!((t.user_individual, t.ad_individual), (0.0, 0.0));
        assert!((p - i.oracle_p.unwrap()).abs() < 1e-12);
    }
}
