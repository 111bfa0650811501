use std::path::Path;

use super::*;
use crate::events::{Event as _, Impression, RawFeatures, RawValue};

fn shipped() -> FeatureSpec {
    FeatureSpec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/features.toml")).unwrap()
}

fn parse(text: &str) -> Result<FeatureSpec, SpecError> {
    FeatureSpec::parse(text, "test")
}

/// A small deterministic generator, so the property tests need no extra crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A raw record as serving might assemble it: some values missing, some categories never seen,
/// some numbers non-finite or written as strings.
fn random_record(rng: &mut Lcg, spec: &FeatureSpec) -> RawFeatures {
    let mut raw = RawFeatures::new();
    let mut names: Vec<&str> = Vec::new();
    for f in &spec.features {
        names.push(f.input_name());
        names.extend(f.clicks.as_deref());
        names.extend(f.impressions.as_deref());
    }
    for name in names {
        let value = match rng.below(8) {
            0 => continue,
            1 => RawValue::Missing,
            2 => RawValue::Num(f64::NAN),
            3 => RawValue::Num(f64::INFINITY),
            4 => RawValue::from(format!("never-seen-{}", rng.next())),
            5 => RawValue::from(format!("{}", rng.below(1000))),
            _ => RawValue::Num(rng.below(100_000) as f64 / 7.0),
        };
        raw.insert(name.to_string(), value);
    }
    raw
}

fn transform(t: &Transformer, raw: &RawFeatures) -> (Vec<i64>, Vec<f32>, RowDefaults) {
    let (mut ids, mut dense) = (Vec::new(), Vec::new());
    let defaults = t.transform(raw, &mut ids, &mut dense);
    (ids, dense, defaults)
}

/// Statistics fitted on random records.
fn stats(spec: &FeatureSpec) -> TransformStats {
    let mut rng = Lcg(7);
    let records: Vec<RawFeatures> = (0..2_000).map(|_| random_record(&mut rng, spec)).collect();
    TransformStats::fit(spec, &records)
}

fn fitted(spec: &FeatureSpec) -> Transformer {
    Transformer::new(spec, &stats(spec)).unwrap()
}

#[test]
fn the_shipped_spec_is_valid_and_its_version_ignores_layout() {
    let spec = shipped();
    assert_eq!(spec.id_features().count() + spec.dense_features().count(), spec.features.len());
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/features.toml")).unwrap();
    let without_comments: String =
        text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n\n");
    assert_eq!(parse(&without_comments).unwrap().version(), spec.version());
    let changed = text.replace("buckets = 64 }", "buckets = 65 }");
    assert_ne!(parse(&changed).unwrap().version(), spec.version(), "a changed feature changes the version");
    assert_eq!(spec.version().len(), 64);
}

#[test]
fn every_spec_problem_is_reported_together() {
    let text = r#"
[[feature]]
name = "a"
source = "user"
type = "categorical"
transform = [{ op = "log1p" }]
default = 3.0

[[feature]]
name = "a"
source = "ad"
type = "numeric"
transform = [{ op = "clip", min = 5.0, max = 1.0 }, { op = "hash", buckets = 0 }]

[[feature]]
name = "x"
source = "cross"
type = "categorical"
cross = ["a", "missing"]
transform = [{ op = "hash", buckets = 10 }]

[[feature]]
name = "r"
source = "ad"
type = "rate"
clicks = "c"
transform = [{ op = "smoothed_ctr", prior_ctr = 2.0, prior_weight = 1.0 }, { op = "bucketise", boundaries = [2.0, 1.0] }]

[[feature]]
name = "truth"
source = "request"
type = "numeric"
input = "oracle_p"
transform = []
"#;
    let error = parse(text).unwrap_err();
    let text = error.to_string();
    for expected in [
        "feature `a`: is categorical: its transform must be exactly",
        "feature `a`: is categorical: its default must be a string",
        "feature `a`: is defined twice",
        "feature `a`: has step `hash` where only clip",
        "feature `a`: clip needs finite min < max",
        "feature `a`: hash buckets is 0",
        "feature `x`: crosses `missing`, which is not a feature",
        "feature `r`: is a rate: it needs `clicks` and `impressions`",
        "feature `r`: smoothed_ctr needs 0 < prior_ctr < 1",
        "feature `r`: bucketise boundaries must be finite and strictly increasing",
        "feature `truth`: reads `oracle_p`, the evaluation-only truth",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn unknown_keys_and_ops_are_refused() {
    let error =
        parse("[[feature]]\nname = \"a\"\nsource = \"user\"\ntype = \"categorical\"\nbuckets = 3\ntransform = []\n");
    assert!(error.unwrap_err().to_string().contains("unknown field `buckets`"));
    let error =
        parse("[[feature]]\nname = \"a\"\nsource = \"user\"\ntype = \"numeric\"\ntransform = [{ op = \"sqrt\" }]\n");
    assert!(error.unwrap_err().to_string().contains("unknown variant `sqrt`"));
}

#[test]
fn a_position_feature_is_numeric_and_reads_the_slot() {
    let bucketised = "transform = [{ op = \"bucketise\", boundaries = [1.0, 2.0] }]\n";
    let ok = format!("[[feature]]\nname = \"position\"\nsource = \"position\"\ntype = \"numeric\"\n{bucketised}");
    assert!(parse(&ok).is_ok(), "{:?}", parse(&ok));
    let other_input = format!(
        "[[feature]]\nname = \"slot\"\nsource = \"position\"\ntype = \"numeric\"\ninput = \"rank\"\n{bucketised}"
    );
    assert!(parse(&other_input).unwrap_err().to_string().contains("must be numeric and read `position`"));
    let categorical = "[[feature]]\nname = \"position\"\nsource = \"position\"\ntype = \"categorical\"\ntransform = [{ op = \"hash\", buckets = 8 }]\n";
    assert!(parse(categorical).unwrap_err().to_string().contains("must be numeric"));
}

#[test]
fn a_history_feature_reads_pair_counters() {
    let numeric = |input: &str| {
        format!(
            "[[feature]]\nname = \"h\"\nsource = \"history\"\ntype = \"numeric\"\ninput = \"{input}\"\ntransform = [{{ op = \"log1p\" }}]\n"
        )
    };
    assert!(parse(&numeric("user_category_clicks_7d")).is_ok());
    assert!(parse(&numeric("user_advertiser_impressions_1d")).is_ok());
    let error = parse(&numeric("user_clicks_7d")).unwrap_err().to_string();
    assert!(error.contains("has source history but reads `user_clicks_7d`"), "{error}");
    assert!(parse(&numeric("user_categoryclicks")).is_err(), "the pair's name ends at an underscore");
    let rate = "[[feature]]\nname = \"r\"\nsource = \"history\"\ntype = \"rate\"\nclicks = \"user_category_clicks_7d\"\nimpressions = \"ad_impressions_7d\"\ntransform = [{ op = \"smoothed_ctr\", prior_ctr = 0.02, prior_weight = 10.0 }]\n";
    assert!(parse(rate).unwrap_err().to_string().contains("reads `ad_impressions_7d`"));
    let categorical = "[[feature]]\nname = \"c\"\nsource = \"history\"\ntype = \"categorical\"\ntransform = [{ op = \"hash\", buckets = 8 }]\n";
    assert!(parse(categorical).unwrap_err().to_string().contains("must be numeric or a rate"));
}

#[test]
fn standardise_needs_the_models_statistics() {
    let spec = shipped();
    let error = Transformer::new(&spec, &TransformStats::default()).unwrap_err().to_string();
    assert!(
        error.contains("feature `bid`: has a standardise step but the model's transform statistics have none"),
        "{error}"
    );
    let mut stats = stats(&spec);
    stats.standardise.insert("user_id".into(), Standardisation { mean: 0.0, std: 1.0 });
    let error = Transformer::new(&spec, &stats).unwrap_err().to_string();
    assert!(error.contains("feature `user_id`: has standardisation statistics but no standardise step"), "{error}");
}

#[test]
fn missing_unseen_and_non_finite_values_are_handled() {
    let spec = shipped();
    let t = fitted(&spec);
    let (ids, dense, defaults) = transform(&t, &RawFeatures::new());
    assert_eq!((ids.len(), dense.len()), (t.id_width(), t.dense_width()));
    assert!(dense.iter().all(|x| x.is_finite()));
    // Every field is missing; the rates count two counters each.
    let counters = spec.features.iter().filter(|f| f.kind == Kind::Rate).count() as u32;
    let crosses = spec.features.iter().filter(|f| f.source == Source::Cross).count() as u32;
    assert_eq!(defaults.0, spec.features.len() as u32 + counters + crosses);
    let user_id = spec.id_features().position(|f| f.name == "user_id").unwrap();
    assert_eq!(ids[user_id], 0, "a missing id without default gets the missing bucket");
    let segment = spec.id_features().position(|f| f.name == "user_segment").unwrap();
    assert_ne!(ids[segment], 0, "a missing value with a default hashes the default");

    let unseen = RawFeatures::from([("user_id".into(), RawValue::from("a-user-nobody-has-seen"))]);
    let (ids, ..) = transform(&t, &unseen);
    assert!((1..=131_072).contains(&ids[user_id]), "unseen categories hash into the table");

    let bid = spec.dense_features().position(|f| f.name == "bid").unwrap();
    let nan = RawFeatures::from([("bid".into(), RawValue::Num(f64::NAN))]);
    let zero = RawFeatures::from([("bid".into(), RawValue::Num(0.0))]);
    assert_eq!(transform(&t, &nan).1[bid], transform(&t, &zero).1[bid], "non-finite -> default 0");
    let text = RawFeatures::from([("bid".into(), RawValue::from("1.5"))]);
    let number = RawFeatures::from([("bid".into(), RawValue::Num(1.5))]);
    assert_eq!(transform(&t, &text).1[bid], transform(&t, &number).1[bid], "numbers written as text parse");
}

#[test]
fn bucketise_crosses_and_rates() {
    let spec = shipped();
    let t = fitted(&spec);
    let hour = spec.id_features().position(|f| f.name == "hour_of_day").unwrap();
    for (h, expected) in [(0.0, 1), (0.5, 1), (1.0, 2), (23.0, 24), (99.0, 24)] {
        let raw = RawFeatures::from([("hour".into(), RawValue::Num(h))]);
        assert_eq!(transform(&t, &raw).0[hour], expected, "hour {h}");
    }
    let cross = spec.id_features().position(|f| f.name == "segment_x_category").unwrap();
    let pair = |s: &str, c: &str| {
        let raw = RawFeatures::from([("segment".into(), RawValue::from(s)), ("category".into(), RawValue::from(c))]);
        transform(&t, &raw).0[cross]
    };
    assert_eq!(pair("ab", "c"), pair("ab", "c"));
    assert_ne!(pair("ab", "c"), pair("a", "bc"), "the separator keeps crosses apart");

    // With no counters a rate is its prior; a lot of evidence moves it to the observed rate.
    let plain = FeatureSpec::parse(
        "[[feature]]\nname = \"ctr\"\nsource = \"ad\"\ntype = \"rate\"\nclicks = \"c\"\nimpressions = \"i\"\n\
         transform = [{ op = \"smoothed_ctr\", prior_ctr = 0.02, prior_weight = 100.0 }]\n",
        "rate",
    )
    .unwrap();
    let t = Transformer::new(&plain, &TransformStats::default()).unwrap();
    assert!((transform(&t, &RawFeatures::new()).1[0] - 0.02).abs() < 1e-7);
    let seen = RawFeatures::from([("c".into(), RawValue::Num(5000.0)), ("i".into(), RawValue::Num(100_000.0))]);
    assert!((transform(&t, &seen).1[0] - 0.0499).abs() < 1e-3);
}

#[test]
fn standardised_features_are_centred_on_their_training_data() {
    let spec = shipped();
    let mut rng = Lcg(11);
    let records: Vec<RawFeatures> = (0..5_000).map(|_| random_record(&mut rng, &spec)).collect();
    let t = Transformer::new(&spec, &TransformStats::fit(&spec, &records)).unwrap();
    let bid = spec.dense_features().position(|f| f.name == "bid").unwrap();
    let values: Vec<f64> = records.iter().map(|r| f64::from(transform(&t, r).1[bid])).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / values.len() as f64;
    assert!(mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3, "mean {mean}, variance {var}");
}

/// The serving path transforms the record it assembled; the training path transforms the record
/// logged in the impression event after a trip through Kafka's JSON. They must agree exactly.
#[test]
fn serving_and_training_paths_give_identical_tensors() {
    let spec = shipped();
    let t = fitted(&spec);
    let mut rng = Lcg(2026);
    for i in 0..2_000 {
        let raw = random_record(&mut rng, &spec);
        let serving = transform(&t, &raw);
        let impression = Impression::example(&format!("imp-{i}"), raw.clone());
        let logged = Impression::decode(&impression.encode()).unwrap();
        let training = transform(&t, &logged.features);
        assert_eq!(serving.0, training.0, "ids differ for {raw:?}");
        assert_eq!(
            serving.1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            training.1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "dense values differ for {raw:?}"
        );
        assert_eq!(serving.2, training.2, "defaults differ for {raw:?}");
    }
}
