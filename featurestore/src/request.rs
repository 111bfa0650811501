//! The ranking request: the JSON body of `POST /v1/rank`.
//!
//! It lives with the other contracts because two crates that must not depend on each other
//! speak it: serving accepts it and the load-test world produces it.

use serde::{Deserialize, Serialize};

use crate::events::RawFeatures;

/// A user, a context and the candidate ads to rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankRequest {
    /// The caller's id for this request; echoed in impressions.
    pub request_id: String,
    pub user_id: String,
    pub context: RequestContext,
    pub candidates: Vec<Candidate>,
    /// How many ranked candidates to return (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// How long the caller waits, in milliseconds (default: the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u32>,
}

/// Where and when the request happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestContext {
    pub surface: String,
    /// Milliseconds since the Unix epoch.
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
