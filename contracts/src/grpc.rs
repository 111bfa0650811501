//! The ranking API over gRPC (`proto/adrank/v1/ranking.proto`): the generated messages and
//! stubs, and the request's conversion to and from [`crate::request::RankRequest`], so that
//! both APIs validate and rank one type.

use std::borrow::Cow;

use crate::{
    events::{EventError, RawFeatures, RawValue},
    request::{Candidate, RankRequest, RequestContext},
};

/// The messages and the `Ranking` service's stubs, as `tonic-prost-build` generates them.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("adrank.v1");
}

/// The service's full name and the method's path, as a client writes them on the wire.
pub const RANK_PATH: &str = "/adrank.v1.Ranking/Rank";

fn features(map: std::collections::HashMap<String, v1::Value>) -> RawFeatures {
    map.into_iter().map(|(name, value)| (Cow::Owned(name), raw(value))).collect()
}

fn raw(value: v1::Value) -> RawValue {
    match value.kind {
        Some(v1::value::Kind::Num(x)) => RawValue::Num(x),
        Some(v1::value::Kind::Str(s)) => RawValue::from(s),
        None => RawValue::Missing,
    }
}

fn value(raw: &RawValue) -> v1::Value {
    let kind = match raw {
        RawValue::Num(x) => Some(v1::value::Kind::Num(*x)),
        RawValue::Str(s) => Some(v1::value::Kind::Str(s.to_string())),
        RawValue::Missing => None,
    };
    v1::Value { kind }
}

fn message_features(features: &RawFeatures) -> std::collections::HashMap<String, v1::Value> {
    features.iter().map(|(name, raw)| (name.to_string(), value(raw))).collect()
}

impl TryFrom<v1::RankRequest> for RankRequest {
    type Error = EventError;

    /// Everything but a missing context converts; the request's own rules are
    /// [`RankRequest::validate`]'s, as for JSON.
    fn try_from(message: v1::RankRequest) -> Result<Self, EventError> {
        let context = message.context.ok_or_else(|| EventError::new("context", "is missing"))?;
        Ok(Self {
            request_id: message.request_id,
            user_id: message.user_id,
            context: RequestContext {
                surface: context.surface,
                event_time_ms: context.event_time_ms,
                features: features(context.features),
            },
            candidates: message
                .candidates
                .into_iter()
                .map(|c| Candidate {
                    ad_id: c.ad_id,
                    advertiser_id: c.advertiser_id,
                    bid: c.bid,
                    features: features(c.features),
                })
                .collect(),
            top_k: message.top_k,
            deadline_ms: message.deadline_ms,
        })
    }
}

impl From<&RankRequest> for v1::RankRequest {
    fn from(request: &RankRequest) -> Self {
        Self {
            request_id: request.request_id.clone(),
            user_id: request.user_id.clone(),
            context: Some(v1::RequestContext {
                surface: request.context.surface.clone(),
                event_time_ms: request.context.event_time_ms,
                features: message_features(&request.context.features),
            }),
            candidates: request
                .candidates
                .iter()
                .map(|c| v1::Candidate {
                    ad_id: c.ad_id.clone(),
                    advertiser_id: c.advertiser_id.clone(),
                    bid: c.bid,
                    features: message_features(&c.features),
                })
                .collect(),
            top_k: request.top_k,
            deadline_ms: request.deadline_ms,
        }
    }
}

/// The HTTP status a gRPC code stands for: how the load generator and serving's metrics count
/// a gRPC call beside HTTP's.
pub fn http_status(code: tonic::Code) -> u16 {
    use tonic::Code;
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => 400,
        Code::NotFound => 404,
        Code::ResourceExhausted => 429,
        Code::DeadlineExceeded => 504,
        Code::Unavailable => 503,
        Code::Unimplemented => 501,
        // nginx's "client closed request": the caller gave up.
        Code::Cancelled => 499,
        _ => 500,
    }
}

/// The `grpc-timeout` header's value (`<up to 8 digits><H|M|S|m|u|n>`) as a duration; `None`
/// when it is malformed.
pub fn parse_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_survives_the_round_trip_through_its_message() {
        let request = RankRequest {
            request_id: "r1".into(),
            user_id: "u1".into(),
            context: RequestContext {
                surface: "feed".into(),
                event_time_ms: 1_700_000_000_000,
                features: [(Cow::Borrowed("hour"), RawValue::Num(14.0)), (Cow::Borrowed("device"), "tv".into())].into(),
            },
            candidates: vec![Candidate {
                ad_id: "a1".into(),
                advertiser_id: "v1".into(),
                bid: 1.25,
                features: [(Cow::Borrowed("promo"), RawValue::Missing)].into(),
            }],
            top_k: Some(3),
            deadline_ms: None,
        };
        let message = v1::RankRequest::from(&request);
        let encoded = prost::Message::encode_to_vec(&message);
        let decoded = <v1::RankRequest as prost::Message>::decode(encoded.as_slice()).unwrap();
        assert_eq!(RankRequest::try_from(decoded).unwrap(), request);
    }

    #[test]
    fn a_request_without_context_names_the_field() {
        let e = RankRequest::try_from(v1::RankRequest::default()).unwrap_err();
        assert_eq!(e.field, "context");
    }

    #[test]
    fn grpc_timeouts_parse_by_unit_and_refuse_malformed_values() {
        use std::time::Duration;
        assert_eq!(parse_timeout("50m"), Some(Duration::from_millis(50)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "5x", "-5m", "5 m"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }
}
