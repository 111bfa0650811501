use std::{borrow::Cow, path::Path, sync::Arc};

use adrank_contracts::{
    request::{Candidate, RequestContext},
    spec::{FeatureSpec, TransformStats},
};

use super::*;
use crate::rank::logged_record;

fn record(entries: &[(&'static str, RawValue)]) -> RawFeatures {
    entries.iter().map(|(k, v)| (Cow::Borrowed(*k), v.clone())).collect()
}

fn spec() -> FeatureSpec {
    FeatureSpec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/features.toml")).unwrap()
}

fn request(context: RawFeatures, candidates: Vec<Candidate>) -> RankRequest {
    RankRequest {
        request_id: "r1".into(),
        user_id: "u1".into(),
        context: RequestContext { surface: "feed".into(), event_time_ms: 0, features: context },
        candidates,
        top_k: None,
        deadline_ms: None,
    }
}

/// What the trainer transforms for candidate `i` scored at `slot`: its logged record with the
/// served slot.
fn trained_row(
    transformer: &Transformer,
    (request, fetched, context): (&RankRequest, &Fetched, &RawFeatures),
    i: usize,
    slot: u32,
) -> (Vec<i64>, Vec<f32>) {
    let c = &request.candidates[i];
    let mut trained = logged_record([&fetched.user, &fetched.ads[i].record(), context, &c.features], c.bid);
    trained.insert(POSITION_FIELD, RawValue::Num(f64::from(slot)));
    let (mut ids, mut dense) = (Vec::new(), Vec::new());
    transformer.transform(&trained, &mut ids, &mut dense);
    (ids, dense)
}

/// Each row of `rows` against the trainer's.
fn assert_rows_match(
    encoder: &Encoder,
    parts: (&RankRequest, &Fetched, &RawFeatures),
    which: &[(usize, u32)],
    rows: &Rows,
    case: &str,
) {
    let (idw, dw) = (encoder.transformer.id_width(), encoder.transformer.dense_width());
    assert_eq!(rows.rows, which.len());
    for (j, &(i, slot)) in which.iter().enumerate() {
        let (ids, dense) = trained_row(&encoder.transformer, parts, i, slot);
        assert_eq!(
            (&rows.ids[j * idw..(j + 1) * idw], &rows.dense[j * dw..(j + 1) * dw]),
            (&ids[..], &dense[..]),
            "{case}: candidate {i} at slot {slot}"
        );
    }
}

/// Serving scores a candidate through its layers; the trainer later transforms the logged
/// record (with the served slot). Any difference between the two would be training/serving
/// skew, so the rows must be identical, overrides between layers included.
#[test]
fn served_rows_transform_exactly_like_their_logged_records() {
    let spec = spec();
    let user = record(&[
        ("user_id", "u1".into()),
        ("segment", "s3".into()),
        ("country", "de".into()),
        ("user_clicks_7d", RawValue::Num(2.0)),
        ("user_impressions_7d", RawValue::Num(40.0)),
    ]);
    let ad = record(&[
        ("ad_id", "a9".into()),
        ("advertiser_id", "v2".into()),
        ("category", "shoes".into()),
        ("format", "banner".into()),
        ("ad_clicks_7d", RawValue::Num(5.0)),
        ("ad_impressions_7d", RawValue::Num(300.0)),
        // Context and candidate layers below override these.
        ("hour", RawValue::Num(1.0)),
        ("device", "tv".into()),
    ]);
    // The advertiser's values win over the ad's where names repeat.
    let advertiser = record(&[
        ("advertiser_id", "v2".into()),
        ("advertiser_clicks_7d", RawValue::Num(50.0)),
        ("advertiser_impressions_7d", RawValue::Num(900.0)),
        ("format", "video".into()),
    ]);
    // The history pairs' counters, and a name that repeats the advertiser's: history wins.
    let category_history = record(&[
        ("user_category_clicks_7d", RawValue::Num(3.0)),
        ("user_category_impressions_7d", RawValue::Num(20.0)),
    ]);
    let advertiser_history = record(&[
        ("user_advertiser_clicks_7d", RawValue::Num(1.0)),
        ("user_advertiser_impressions_7d", RawValue::Num(7.0)),
        ("advertiser_clicks_7d", RawValue::Num(51.0)),
    ]);
    let stored = AdFeatures {
        ad: Arc::new(ad),
        advertiser: Arc::new(advertiser),
        ad_age_hours: RawValue::Num(30.0),
        history: [Arc::new(category_history), Arc::new(advertiser_history)],
    };
    let context = record(&[("hour", RawValue::Num(14.0)), ("surface", "feed".into())]);
    let own = record(&[("device", "phone".into()), ("bid", RawValue::Num(99.0))]);
    let logged = logged_record([&user, &stored.record(), &context, &own], 1.5);
    assert_eq!(logged.get("hour"), Some(&RawValue::Num(14.0)));
    assert_eq!(logged.get("device"), Some(&"phone".into()));
    assert_eq!(logged.get("format"), Some(&"video".into()), "the advertiser's value wins over the ad's");
    assert_eq!(logged.get("ad_age_hours"), Some(&RawValue::Num(30.0)));
    assert_eq!(logged.get("advertiser_clicks_7d"), Some(&RawValue::Num(51.0)), "history wins over the advertiser");
    assert_eq!(logged.get("user_category_impressions_7d"), Some(&RawValue::Num(20.0)));
    assert_eq!(logged.get("bid"), Some(&RawValue::Num(1.5)), "the request's bid wins");
    assert!(!logged.contains_key(POSITION_FIELD));

    let stats = TransformStats::fit(&spec, [&logged]);
    let encoder = Encoder::new(Arc::new(Transformer::new(&spec, &stats).unwrap()));
    let inputs = encoder.transformer.inputs();
    assert!(inputs.iter().any(|i| i == AdFeatures::AGE), "the spec reads the ad's age: the test must cover it");
    for history in ["user_category_clicks_7d", "user_advertiser_impressions_7d"] {
        assert!(inputs.iter().any(|i| i == history), "the spec reads {history}: the test must cover it");
    }
    // The same candidate with its own fields and without: with none, its own fields change no
    // feature from shared to per candidate.
    let candidate = |features: &RawFeatures| Candidate {
        ad_id: "a9".into(),
        advertiser_id: "v2".into(),
        bid: 1.5,
        features: features.clone(),
    };
    for own in [own, RawFeatures::new()] {
        let request = request(context.clone(), vec![candidate(&own), candidate(&own)]);
        let fetched = Fetched { user: user.clone(), ads: vec![stored.clone(), stored.clone()], ..Fetched::default() };
        let parts = (&request, &fetched, &context);
        // At the top slot, as every candidate is ranked, and at lower ones, as the shown slots
        // are scored again: the trainer reads the logged record with the served position.
        for which in [vec![(0, 0), (1, 0)], vec![(1, 3), (0, 1)]] {
            let rows = encoder.slot_rows(parts, which.iter().copied());
            assert_rows_match(&encoder, parts, &which, &rows, &format!("own fields {}", own.len()));
        }
    }
}

/// A small deterministic generator (xorshift), so the cases below are the same every run.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn value(&mut self) -> RawValue {
        match self.below(6) {
            0 => RawValue::Num(self.below(50) as f64),
            1 => RawValue::Num(self.below(1000) as f64 / 7.0),
            2 => format!("{}", self.below(20)).into(),
            3 => "".into(),
            4 => RawValue::Missing,
            _ => format!("v{}", self.below(5)).into(),
        }
    }

    /// A layer holding some of `names`, each with the given chance.
    fn layer(&mut self, names: &[&'static str], percent: u64) -> RawFeatures {
        let mut layer = RawFeatures::new();
        for &name in names {
            if self.chance(percent) {
                layer.insert(name, self.value());
            }
        }
        layer
    }
}

/// Every layer may hold any input (and names no feature reads): whatever overlaps a request
/// brings, each served row equals its logged record's, with records shared between candidates
/// (resolved once), at the top slot and below it.
#[test]
fn rows_match_logged_records_whatever_the_layers_hold() {
    let spec = spec();
    let stats = TransformStats::fit(&spec, std::iter::empty());
    let encoder = Encoder::new(Arc::new(Transformer::new(&spec, &stats).unwrap()));
    let mut names: Vec<&'static str> =
        encoder.transformer.inputs().iter().map(|s| &*Box::leak(s.clone().into_boxed_str())).collect();
    names.push("unread");
    let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
    // Records shared between candidates, as the reader shares them.
    let ads: Vec<Arc<RawFeatures>> = (0..12).map(|_| Arc::new(draw.layer(&names, 25))).collect();
    let advertisers: Vec<Arc<RawFeatures>> = (0..4).map(|_| Arc::new(draw.layer(&names, 25))).collect();
    let empty = Arc::new(RawFeatures::new());
    let mut mixes = [0usize; 2];
    for case in 0..300 {
        // Rare layers: most requests leave the user, context and candidates without ad inputs.
        let sparse = |draw: &mut Draw| if draw.chance(50) { 0 } else { 10 };
        let percent = sparse(&mut draw) + 5;
        let user = draw.layer(&names, percent);
        let percent = sparse(&mut draw);
        let context = draw.layer(&names, percent);
        let count = 1 + draw.below(8);
        let mut candidates = Vec::new();
        let mut stored = Vec::new();
        for _ in 0..count {
            let own = if draw.chance(20) { draw.layer(&names, 10) } else { RawFeatures::new() };
            candidates.push(Candidate {
                ad_id: "a".into(),
                advertiser_id: "v".into(),
                bid: draw.below(9) as f64,
                features: own,
            });
            let history = |draw: &mut Draw| match draw.below(3) {
                0 => empty.clone(),
                1 => Arc::new(draw.layer(&names, 5)),
                _ => Arc::new(draw.layer(&["user_category_clicks_7d", "user_advertiser_impressions_7d"], 60)),
            };
            stored.push(AdFeatures {
                ad: ads[draw.below(ads.len())].clone(),
                advertiser: advertisers[draw.below(advertisers.len())].clone(),
                ad_age_hours: if draw.chance(70) { RawValue::Num(draw.below(100) as f64) } else { RawValue::Missing },
                history: [history(&mut draw), history(&mut draw)],
            });
        }
        let request = request(context.clone(), candidates);
        let fetched = Fetched { user, ads: stored, ..Fetched::default() };
        let parts = (&request, &fetched, &context);
        let which: Vec<(usize, u32)> =
            (0..count).map(|i| (i, if draw.chance(30) { draw.below(8) as u32 } else { 0 })).collect();
        let rows = encoder.slot_rows(parts, which.iter().copied());
        assert_rows_match(&encoder, parts, &which, &rows, &format!("case {case}"));
        mixes[usize::from(context.is_empty() && request.candidates.iter().all(|c| c.features.is_empty()))] += 1;
    }
    // Both kinds of request ran.
    assert!(mixes.iter().all(|&n| n > 30), "{mixes:?}");
}
