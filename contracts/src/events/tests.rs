use super::*;

fn impression() -> Impression {
    Impression {
        impression_id: "imp-1".into(),
        request_id: "req-1".into(),
        event_time_ms: 1_767_225_600_000,
        user_id: "u-7".into(),
        ad_id: "a-3".into(),
        advertiser_id: "adv-1".into(),
        position: 0,
        surface: "feed".into(),
        model_name: "ctr".into(),
        model_version: "3".into(),
        score: 0.0213,
        bid: 1.25,
        features: RawFeatures::from([
            ("user_segment".into(), RawValue::from("sports")),
            ("ad_ctr_7d".into(), RawValue::Num(0.1 + 0.2)),
            ("hour".into(), RawValue::Num(13.0)),
            ("country".into(), RawValue::Missing),
        ]),
        oracle_p: Some(0.019),
        rollout: Some(RolloutArm { id: 2, arm: "candidate".into() }),
        shadow_score: Some(0.031),
    }
}

fn json_with(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(&impression().encode()).unwrap();
    edit(&mut value);
    serde_json::to_vec(&value).unwrap()
}

fn rejection(bytes: &[u8]) -> EventError {
    Impression::decode(bytes).expect_err("the record must be rejected")
}

#[test]
fn round_trip_is_exact_and_deterministic() {
    let event = impression();
    let bytes = event.encode();
    assert_eq!(Impression::decode(&bytes).unwrap(), event, "floats survive JSON exactly");
    assert_eq!(event.encode(), bytes, "same event, same bytes");
    assert_eq!(event.key(), "imp-1");
}

#[test]
fn clicks_share_their_impressions_key() {
    let click = Click {
        click_id: "c-1".into(),
        impression_id: "imp-1".into(),
        event_time_ms: 1,
        user_id: "u".into(),
        ad_id: "a".into(),
        advertiser_id: "adv".into(),
        category: None,
    };
    assert_eq!(click.key(), impression().key());
    assert_eq!(Click::decode(&click.encode()).unwrap(), click);
    assert!(!String::from_utf8(click.encode()).unwrap().contains("category"), "absent, it is left out");
}

#[test]
fn clicks_carry_their_impressions_category() {
    let mut features = RawFeatures::new();
    features.insert(CATEGORY_FIELD, RawValue::from("shoes"));
    let impression = Impression::example("imp-1", features);
    let click = Click::on(&impression, "c-1".into(), 1);
    assert_eq!(click.category.as_deref(), Some("shoes"));
    assert_eq!(Click::decode(&click.encode()).unwrap(), click);
    // A number is no category; an empty one is refused on the wire.
    let mut features = RawFeatures::new();
    features.insert(CATEGORY_FIELD, RawValue::Num(3.0));
    assert_eq!(Click::on(&Impression::example("imp-2", features), "c-2".into(), 1).category, None);
    let empty = Click { category: Some(String::new()), ..click };
    let error = Click::decode(&empty.encode()).unwrap_err();
    assert!(error.to_string().contains("category"), "{error}");
}

#[test]
fn malformed_json_is_named() {
    let error = rejection(b"{\"impression_id\": ");
    assert!(error.reason.starts_with("is not valid JSON"), "{error}");
    let error = rejection(b"[1, 2]");
    assert!(error.reason.starts_with("does not match the schema"), "{error}");
}

#[test]
fn positional_arrays_are_refused_on_every_topic() {
    // serde's derive reads a struct from an array of its fields in order; each of these decoded
    // as a valid event before.
    let impression = br#"["i","r",1,"u","a","v",0,"feed","ctr","3",0.5,1.0,{}]"#;
    let error = Impression::decode(impression).unwrap_err();
    assert!(error.reason.contains("invalid type: sequence, expected a JSON object"), "{error}");
    let click = br#"["c-1","imp-1",1,"u","a","adv"]"#;
    assert!(Click::decode(click).unwrap_err().reason.contains("expected a JSON object"));
    assert!(UserProfile::decode(br#"["u",0,{}]"#).unwrap_err().reason.contains("expected a JSON object"));
    let ad = br#"["a","adv",0,"live",{}]"#;
    assert!(AdRecord::decode(ad).unwrap_err().reason.contains("expected a JSON object"));
}

#[test]
fn each_schema_violation_has_its_reason() {
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (json_with(|v| drop(v.as_object_mut().unwrap().remove("ad_id"))), "", "missing field `ad_id`"),
        (json_with(|v| v["campaign"] = "x".into()), "", "unknown field `campaign`"),
        (json_with(|v| v["position"] = "top".into()), "", "invalid type: string \"top\""),
        (json_with(|v| v["position"] = (-1).into()), "", "invalid value: integer `-1`"),
        (json_with(|v| v["features"]["x"] = true.into()), "", "expected a string, a number or null"),
        (json_with(|v| v["user_id"] = "".into()), "user_id", "is empty"),
        (json_with(|v| v["ad_id"] = "a".repeat(129).into()), "ad_id", "has 129 bytes"),
        (json_with(|v| v["request_id"] = "a\nb".into()), "request_id", "control character"),
        (json_with(|v| v["event_time_ms"] = (-5).into()), "event_time_ms", "is -5"),
        // Microseconds for milliseconds: the year 57,000.
        (json_with(|v| v["event_time_ms"] = 1_767_225_600_000_000i64.into()), "event_time_ms", "(year 9999)"),
        (json_with(|v| v["score"] = 1.5.into()), "score", "probability in [0, 1]"),
        (json_with(|v| v["bid"] = (-0.5).into()), "bid", "non-negative"),
        (json_with(|v| v["surface"] = " ".into()), "surface", "is empty"),
        (json_with(|v| v["oracle_p"] = 2.0.into()), "oracle_p", "probability"),
        (json_with(|v| v["features"]["oracle_p"] = 0.5.into()), "features.oracle_p", "evaluation-only"),
        (json_with(|v| v["rollout"]["arm"] = "canary".into()), "rollout.arm", "expected one of"),
        (json_with(|v| v["shadow_score"] = (-0.1).into()), "shadow_score", "probability"),
        (json_with(|v| v["rollout"]["id"] = 0.into()), "rollout.id", "count from 1"),
        (json_with(|v| drop(v["rollout"].as_object_mut().unwrap().remove("arm"))), "", "missing field `arm`"),
    ];
    for (bytes, field, reason) in cases {
        let error = rejection(&bytes);
        assert_eq!(error.field, field, "{error}");
        assert!(error.to_string().contains(reason), "expected {reason:?} in {error}");
    }
}

#[test]
fn catalog_and_profiles_validate() {
    let ad = AdRecord {
        ad_id: "a-1".into(),
        advertiser_id: "adv-1".into(),
        event_time_ms: 0,
        status: AdStatus::Live,
        attributes: RawFeatures::from([("category".into(), RawValue::from("shoes"))]),
    };
    assert_eq!(AdRecord::decode(&ad.encode()).unwrap(), ad);
    let bad = br#"{"ad_id":"a","advertiser_id":"b","event_time_ms":0,"status":"paused","attributes":{}}"#;
    let error = AdRecord::decode(bad).unwrap_err();
    assert!(error.to_string().contains("unknown variant `paused`, expected `live` or `retired`"), "{error}");
    let user = br#"{"user_id":"u","event_time_ms":0,"attributes":{"oracle_p":0.1}}"#;
    assert_eq!(UserProfile::decode(user).unwrap_err().field, "attributes.oracle_p");
}

#[test]
fn raw_features_stay_sorted_and_the_last_duplicate_wins() {
    let mut raw = RawFeatures::new();
    raw.insert("b", RawValue::Num(1.0));
    raw.insert("a", RawValue::from("x"));
    assert_eq!(raw.insert("b", RawValue::Num(2.0)), Some(RawValue::Num(1.0)));
    assert_eq!(raw.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(serde_json::to_string(&raw).unwrap(), r#"{"a":"x","b":2.0}"#);
    let decoded: RawFeatures = serde_json::from_str(r#"{"z":1,"a":null,"z":2}"#).unwrap();
    assert_eq!(decoded.keys().collect::<Vec<_>>(), ["a", "z"]);
    assert_eq!(decoded.get("z"), Some(&RawValue::Num(2.0)));
    assert_eq!(decoded.get("a"), Some(&RawValue::Missing));
    assert_eq!(
        RawFeatures::from([("q".into(), RawValue::Num(1.0)), ("p".into(), RawValue::Num(2.0))])
            .keys()
            .collect::<Vec<_>>(),
        ["p", "q"]
    );
}

#[test]
fn resolving_a_record_finds_every_name_it_holds_and_nothing_else() {
    let raw = RawFeatures::from([
        ("b".into(), RawValue::Num(2.0)),
        ("d".into(), RawValue::from("x")),
        ("a".into(), RawValue::Num(1.0)),
        ("f".into(), RawValue::Num(6.0)),
    ]);
    let names: Vec<String> = ["a", "c", "d", "e", "f", "g"].map(String::from).into();
    let mut out = Vec::new();
    raw.resolve_into(&names, &mut out);
    let expected: Vec<Option<&RawValue>> = names.iter().map(|n| raw.get(n)).collect();
    assert_eq!(out, expected);
    assert_eq!(out.iter().filter(|v| v.is_some()).count(), 3, "a, d and f; b is not asked for");
    let empty = RawFeatures::new();
    let mut none = Vec::new();
    empty.resolve_into(&names, &mut none);
    assert!(none.len() == names.len() && none.iter().all(Option::is_none));
}
