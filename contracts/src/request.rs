//! The ranking request: the JSON body of `POST /v1/rank`.
//!
//! It lives with the other contracts because two crates that must not depend on each other
//! speak it: serving accepts it and the load-test world produces it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::events::{self, EventError, RawFeatures, integer, object};

/// A user, a context and the candidate ads to rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankRequest {
    /// The caller's id for this request; echoed in impressions.
    pub request_id: String,
    pub user_id: String,
    #[serde(deserialize_with = "object::one")]
    pub context: RequestContext,
    #[serde(deserialize_with = "object::many")]
    pub candidates: Vec<Candidate>,
    /// How many ranked candidates to return (default: the slots the server shows).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "integer::opt")]
    pub top_k: Option<u32>,
    /// How long the caller waits, in milliseconds (default: the server's).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "integer::opt")]
    pub deadline_ms: Option<u32>,
}

/// Where and when the request happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestContext {
    pub surface: String,
    /// Milliseconds since the Unix epoch.
    #[serde(deserialize_with = "integer::int")]
    pub event_time_ms: i64,
    /// Other context-sourced raw features (for example `hour`).
    #[serde(default, skip_serializing_if = "RawFeatures::is_empty")]
    pub features: RawFeatures,
}

/// One ad to rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    pub ad_id: String,
    pub advertiser_id: String,
    /// The advertiser's bid for this impression.
    pub bid: f64,
    /// Request-sourced raw features of this candidate.
    #[serde(default, skip_serializing_if = "RawFeatures::is_empty")]
    pub features: RawFeatures,
}

impl RankRequest {
    /// Checks every rule the JSON shape cannot express; the error names the field (for example
    /// `candidates[3].bid`) and the rule, for a 400 the caller can act on.
    pub fn validate(&self, max_candidates: usize) -> Result<(), EventError> {
        events::id("request_id", &self.request_id)?;
        events::id("user_id", &self.user_id)?;
        events::not_empty("context.surface", &self.context.surface)?;
        events::time("context.event_time_ms", self.context.event_time_ms)?;
        events::features("context.features", &self.context.features)?;
        if self.candidates.is_empty() {
            return Err(EventError::new("candidates", "is empty; send at least one candidate"));
        }
        if self.candidates.len() > max_candidates {
            return Err(EventError::new(
                "candidates",
                format!("has {} entries; at most {max_candidates} are accepted", self.candidates.len()),
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(self.candidates.len());
        for (i, candidate) in self.candidates.iter().enumerate() {
            // Field paths are formatted only for an error: a valid request of 200 candidates
            // would otherwise format 600 of them.
            let field = |name: &str| format!("candidates[{i}].{name}");
            let within = |e: EventError| EventError { field: field(&e.field), ..e };
            events::id("ad_id", &candidate.ad_id).map_err(within)?;
            events::id("advertiser_id", &candidate.advertiser_id).map_err(within)?;
            if !(candidate.bid.is_finite() && candidate.bid >= 0.0) {
                return Err(EventError::new(
                    &field("bid"),
                    format!("is {}; expected a non-negative amount", candidate.bid),
                ));
            }
            events::features("features", &candidate.features).map_err(within)?;
            if let Some(first) = seen.insert(&candidate.ad_id, i) {
                return Err(EventError::new(
                    &field("ad_id"),
                    format!("`{}` is also candidates[{first}]; each ad may be ranked once", candidate.ad_id),
                ));
            }
        }
        if self.top_k == Some(0) {
            return Err(EventError::new("top_k", "is 0; expected at least 1 (or leave it out for all)"));
        }
        if self.deadline_ms == Some(0) {
            return Err(EventError::new("deadline_ms", "is 0; expected at least 1 millisecond"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::RawValue;

    fn request() -> RankRequest {
        RankRequest {
            request_id: "r-1".into(),
            user_id: "u-1".into(),
            context: RequestContext { surface: "feed".into(), event_time_ms: 0, features: RawFeatures::new() },
            candidates: (0..3)
                .map(|i| Candidate {
                    ad_id: format!("a-{i}"),
                    advertiser_id: "v-1".into(),
                    bid: 1.0,
                    features: RawFeatures::new(),
                })
                .collect(),
            top_k: Some(2),
            deadline_ms: Some(50),
        }
    }

    #[test]
    fn a_good_request_passes_and_round_trips() {
        request().validate(1000).unwrap();
        let json = serde_json::to_string(&request()).unwrap();
        assert_eq!(serde_json::from_str::<RankRequest>(&json).unwrap(), request());
    }

    #[test]
    fn each_rule_names_its_field() {
        type Edit = Box<dyn Fn(&mut RankRequest)>;
        let cases: Vec<(Edit, &str, &str)> = vec![
            (Box::new(|r| r.request_id.clear()), "request_id", "is empty"),
            (Box::new(|r| r.user_id = "x".repeat(200)), "user_id", "has 200 bytes"),
            (Box::new(|r| r.context.surface.clear()), "context.surface", "is empty"),
            (Box::new(|r| r.candidates.clear()), "candidates", "is empty"),
            (Box::new(|r| r.candidates[1].bid = f64::NAN), "candidates[1].bid", "non-negative"),
            (Box::new(|r| r.candidates[2].bid = -1.0), "candidates[2].bid", "non-negative"),
            (Box::new(|r| r.candidates[2].ad_id = "a-0".into()), "candidates[2].ad_id", "also candidates[0]"),
            (
                Box::new(|r| {
                    r.candidates[0].features.insert("oracle_p", RawValue::Num(0.1));
                }),
                "candidates[0].features.oracle_p",
                "evaluation-only",
            ),
            (Box::new(|r| r.top_k = Some(0)), "top_k", "is 0"),
            (Box::new(|r| r.deadline_ms = Some(0)), "deadline_ms", "is 0"),
        ];
        for (edit, field, reason) in cases {
            let mut r = request();
            edit(&mut r);
            let error = r.validate(1000).unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert!(error.reason.contains(reason), "expected {reason:?} in {error}");
        }
        let error = request().validate(2).unwrap_err();
        assert_eq!(
            (error.field.as_str(), error.reason.as_str()),
            ("candidates", "has 3 entries; at most 2 are accepted")
        );
    }

    #[test]
    fn arrays_in_place_of_objects_are_refused() {
        let good = r#"{"request_id":"r","user_id":"u","context":{"surface":"f","event_time_ms":0},"candidates":[{"ad_id":"a","advertiser_id":"v","bid":1}]}"#;
        object::from_slice::<RankRequest>(good.as_bytes()).unwrap();
        for bad in [
            r#"["r","u",{"surface":"f","event_time_ms":0},[]]"#,
            r#"{"request_id":"r","user_id":"u","context":["f",0],"candidates":[]}"#,
            r#"{"request_id":"r","user_id":"u","context":{"surface":"f","event_time_ms":0},"candidates":[["a","v",1]]}"#,
        ] {
            let error = object::from_slice::<RankRequest>(bad.as_bytes()).unwrap_err().to_string();
            assert!(error.contains("expected a JSON object"), "{bad}: {error}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json =
            r#"{"request_id":"r","user_id":"u","context":{"surface":"f","event_time_ms":0},"candidates":[],"topk":3}"#;
        let error = serde_json::from_str::<RankRequest>(json).unwrap_err().to_string();
        assert!(error.contains("unknown field `topk`"), "{error}");
    }
}
