//! The ranking API over gRPC (`adrank.v1.Ranking/Rank`, `contracts/proto/adrank/v1/ranking.proto`):
//! the request converts to the one [`RankRequest`] the HTTP API parses and goes through the same
//! validation, routing, admission (one limit for both APIs), ranking, impression log and metrics
//! (`route="rank_grpc"`, the status as its HTTP equivalent). Errors are gRPC statuses with the
//! HTTP API's error kind and field in trailers.

use std::{future::Future, sync::Arc, time::Instant};

use adrank_contracts::{
    grpc::{self, v1},
    request::RankRequest,
};
use axum::http::StatusCode;
use tonic::{Code, Status, metadata::MetadataMap};
use tracing::Instrument as _;

use crate::{
    admission::Admission,
    api::{AppState, PIN_HEADER, Refused, answer},
    metrics,
    rank::RankResponse,
};

/// Trailers of an error status: the HTTP API's error kind, and the field to blame.
pub const KIND_TRAILER: &str = "adrank-error-kind";
pub const FIELD_TRAILER: &str = "adrank-field";
/// gRPC's retry pushback (gRFC A6): how long to wait before retrying an overloaded call.
pub const PUSHBACK_TRAILER: &str = "grpc-retry-pushback-ms";

/// The `Ranking` service over the server's shared state and admission.
#[derive(Debug, Clone)]
pub struct RankingService {
    state: Arc<AppState>,
    admission: Arc<Admission>,
}

impl RankingService {
    pub fn new(state: Arc<AppState>, admission: Arc<Admission>) -> Self {
        Self { state, admission }
    }

    async fn serve(&self, request: tonic::Request<v1::RankRequest>) -> Result<RankResponse, Refused> {
        let Some(_place) = self.admission.acquire().await else {
            return Err(Refused::overloaded(&self.admission, &self.state.config));
        };
        let _in_flight = crate::api::InFlight::start();
        let metadata = request.metadata();
        let cap = metadata.get("grpc-timeout").and_then(|v| grpc::parse_timeout(v.to_str().ok()?));
        let pin = metadata.get(PIN_HEADER).map(|v| v.as_bytes().to_vec());
        let request = RankRequest::try_from(request.into_inner())
            .map_err(|e| Refused::new(StatusCode::BAD_REQUEST, "invalid_request", e.field.clone(), e.to_string()))?;
        answer(&self.state, request, pin.as_deref(), cap).await
    }
}

#[tonic::async_trait]
impl v1::ranking_server::Ranking for RankingService {
    async fn rank(
        &self,
        request: tonic::Request<v1::RankRequest>,
    ) -> Result<tonic::Response<v1::RankResponse>, Status> {
        let started = Instant::now();
        let span = crate::api::rank_span(request.metadata().as_ref(), "adrank.v1.Ranking/Rank");
        let answered = self.serve(request).instrument(span.clone()).await;
        let status = answered.as_ref().map_or_else(|r| r.status, |_| StatusCode::OK);
        span.record("http.response.status_code", status.as_u16());
        if status == StatusCode::TOO_MANY_REQUESTS {
            metrics::shed();
        }
        metrics::request("rank_grpc", status.as_u16(), started.elapsed().as_secs_f64());
        answered.map(|response| tonic::Response::new(message(response))).map_err(status_of)
    }
}

/// The reply as its message.
fn message(response: RankResponse) -> v1::RankResponse {
    let RankResponse { request_id, model, ranked, degraded, timing } = response;
    v1::RankResponse {
        request_id,
        model: Some(v1::ModelRef {
            name: model.name,
            version: model.version,
            arm: model.arm.map(|arm| arm.as_str().to_string()),
        }),
        ranked: ranked
            .into_iter()
            .map(|r| v1::Ranked {
                ad_id: r.ad_id,
                advertiser_id: r.advertiser_id,
                bid: r.bid,
                pctr: r.pctr,
                expected_value: r.expected_value,
                shown_pctr: r.shown_pctr,
                impression_id: r.impression_id,
                position: r.position,
            })
            .collect(),
        degraded,
        timing: Some(v1::Timing {
            features_ms: timing.features_ms,
            queue_ms: timing.queue_ms,
            inference_ms: timing.inference_ms,
            shown_ms: timing.shown_ms,
            total_ms: timing.total_ms,
            batch_rows: timing.batch_rows as u64,
        }),
    }
}

/// A refusal as the gRPC status of the same meaning.
fn status_of(refused: Refused) -> Status {
    let code = match refused.status {
        StatusCode::BAD_REQUEST => Code::InvalidArgument,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::INTERNAL_SERVER_ERROR => Code::Internal,
        _ => Code::Unknown,
    };
    let mut trailers = MetadataMap::new();
    trailers.insert(KIND_TRAILER, refused.kind.parse().expect("error kinds are ASCII words"));
    // A field names a path the client sent; a trailer carries visible ASCII only.
    if !refused.field.is_empty() {
        let field: String = refused
            .field
            .chars()
            .map(|c| if c.is_ascii_graphic() || c == ' ' { c.to_string() } else { c.escape_unicode().to_string() })
            .collect();
        trailers.insert(FIELD_TRAILER, field.parse().expect("visible ASCII is a valid metadata value"));
    }
    if refused.retry {
        trailers.insert(PUSHBACK_TRAILER, "1000".parse().expect("a number"));
    }
    Status::with_metadata(code, refused.message, trailers)
}

/// Serves the `Ranking` service on `listener` until `shutdown` completes, then lets calls in
/// flight finish.
pub async fn run(
    listener: tokio::net::TcpListener,
    service: RankingService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(v1::ranking_server::RankingServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_keeps_its_meaning_as_a_status_and_back() {
        for (status, code) in [
            (StatusCode::BAD_REQUEST, Code::InvalidArgument),
            (StatusCode::NOT_FOUND, Code::NotFound),
            (StatusCode::TOO_MANY_REQUESTS, Code::ResourceExhausted),
            (StatusCode::GATEWAY_TIMEOUT, Code::DeadlineExceeded),
            (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable),
            (StatusCode::INTERNAL_SERVER_ERROR, Code::Internal),
        ] {
            let grpc = status_of(Refused::new(status, "k", "candidates[3].bid", "m".into()));
            assert_eq!(grpc.code(), code);
            assert_eq!(grpc::http_status(code), status.as_u16());
            assert_eq!(grpc.metadata().get(KIND_TRAILER).unwrap(), "k");
            assert_eq!(grpc.metadata().get(FIELD_TRAILER).unwrap(), "candidates[3].bid");
        }
    }

    #[test]
    fn a_field_beyond_visible_ascii_is_escaped_in_its_trailer() {
        let field = "features.caf\u{e9}\nx";
        let grpc = status_of(Refused::new(StatusCode::BAD_REQUEST, "invalid_request", field, "m".into()));
        assert_eq!(grpc.code(), Code::InvalidArgument);
        assert_eq!(grpc.metadata().get(FIELD_TRAILER).unwrap(), "features.caf\\u{e9}\\u{a}x");
    }
}
