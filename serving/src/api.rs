//! The HTTP API: `POST /v1/rank`, `GET /healthz`, `GET /readyz`.
//!
//! Every client mistake is a 4xx whose JSON body names the field and the rule; overload is 429
//! with `Retry-After`; a deadline that passed is 504; nothing a client sends can cause a 5xx.

use std::{future::Future, sync::Arc, time::Instant};

use adrank_contracts::{
    events::{
        self,
        object::{self, Object},
    },
    request::RankRequest,
};
use adrank_featurestore::{online::Reader, trace_context};
use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Extension, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::{
    ServingConfig,
    admission::Admission,
    batcher::BatchError,
    clicks::{ClickError, ClickSink},
    impressions::ImpressionLog,
    manager::ModelManager,
    metrics,
    rank::{RankError, RankResponse, rank},
};

/// The request header that pins a loaded model version (for debugging).
pub const PIN_HEADER: &str = "x-adrank-model-version";

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub models: Arc<ModelManager>,
    /// The online store (`None`: none configured, every request is degraded). A reader made
    /// with [`Reader::lazy`] keeps trying to reach it.
    pub reader: Option<Reader>,
    /// Where served impressions go (`None`: not logged).
    pub impressions: Option<ImpressionLog>,
    /// Where `POST /v1/events/click` publishes (`None`: the route answers 503).
    pub clicks: Option<ClickSink>,
    /// Renders the process's metrics for `/metrics` (`None`: the route answers 404).
    pub metrics: Option<MetricsRender>,
    pub config: ServingConfig,
}

/// A function that renders the installed metrics recorder in Prometheus's text format.
#[derive(Clone)]
pub struct MetricsRender(pub Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for MetricsRender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsRender")
    }
}

/// The JSON body of every error.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize)]
struct ErrorDetail {
    /// `invalid_request`, `unsupported_media_type`, `payload_too_large`, `body_timeout`,
    /// `unknown_model_version`, `overloaded`, `deadline_exceeded`, `unavailable`, `inference_failed`,
    /// `internal`.
    kind: &'static str,
    /// The offending field (`candidates[3].bid`), when one is to blame.
    #[serde(skip_serializing_if = "String::is_empty")]
    field: String,
    message: String,
}

pub(crate) fn error(status: StatusCode, kind: &'static str, field: String, message: String) -> Response {
    (status, Json(ErrorBody { error: ErrorDetail { kind, field, message } })).into_response()
}

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let admission = Admission::new(state.config.admission());
    router_with(state, admission)
}

/// The router over `state`, admitting ranking requests through `admission` (shared with the
/// gRPC API: one limit for the server's capacity, whichever API a request comes by).
pub fn router_with(state: Arc<AppState>, admission: Arc<Admission>) -> Router {
    Router::new()
        .route("/v1/rank", post(timed_rank).layer(Extension(admission)))
        .route("/v1/events/click", post(timed_click))
        .route("/metrics", get(render_metrics))
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/admin/rollout", get(crate::admin::status))
        .route("/admin/rollout/{action}", post(crate::admin::act))
        .with_state(state)
}

/// Serves until `shutdown` completes, then drains in-flight requests.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_both(Listeners { http: listener, grpc: None }, state, shutdown).await
}

/// Where the server listens: HTTP, and gRPC when given.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: Option<TcpListener>,
}

/// [`run`] for both APIs, which share the state and the admission limit; both stop accepting
/// when `shutdown` completes and then drain.
pub async fn run_both(
    listeners: Listeners,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = crate::connections::ConnectionLimits {
        max_connections: state.config.connection_limit(),
        header_timeout: std::time::Duration::from_millis(state.config.header_timeout_ms),
    };
    let admission = Admission::new(state.config.admission());
    let Some(grpc) = listeners.grpc else {
        return crate::connections::serve(listeners.http, router_with(state, admission), limits, shutdown).await;
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let service = crate::grpc::RankingService::new(Arc::clone(&state), Arc::clone(&admission));
    let mut grpc_stopped = stopped.clone();
    let grpc = crate::grpc::run(grpc, service, async move {
        let _ = grpc_stopped.wait_for(|s| *s).await;
    });
    let mut http_stopped = stopped;
    let http = crate::connections::serve(listeners.http, router_with(state, admission), limits, async move {
        let _ = http_stopped.wait_for(|s| *s).await;
    });
    let signal = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let servers = async { tokio::join!(http, grpc) };
    tokio::pin!(servers);
    // The signal stops both, which then drain; or both end by themselves (errors).
    let (http, grpc) = tokio::select! {
        ended = &mut servers => ended,
        () = signal => servers.await,
    };
    grpc.map_err(std::io::Error::other)?;
    http
}

/// [`run`], with a deadline on the drain: once `shutdown` has completed, requests still in
/// flight after `drain` are abandoned, so one stuck request or client cannot hold the exit
/// (Triton's `--exit-timeout-secs`). Returns whether the drain finished in time.
pub async fn run_with_drain_deadline(
    listeners: impl Into<Listeners>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: std::time::Duration,
) -> std::io::Result<bool> {
    let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
    let server = run_both(listeners.into(), state, async move {
        shutdown.await;
        let _ = draining.send(());
    });
    let deadline = async move {
        match drain_started.await {
            Ok(()) => tokio::time::sleep(drain).await,
            // The server ended without a shutdown: its own result decides.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = server => served.map(|()| true),
        () = deadline => Ok(false),
    }
}

impl From<TcpListener> for Listeners {
    fn from(http: TcpListener) -> Self {
        Self { http, grpc: None }
    }
}

/// How long `/readyz` waits for the online store to answer its probe.
const STORE_PROBE: std::time::Duration = std::time::Duration::from_millis(500);

async fn ready(State(state): State<Arc<AppState>>, uri: axum::http::Uri) -> Response {
    // A manager exists only once its first version is loaded and warmed.
    let default = state.models.default_version();
    let m = &default.manifest;
    // Without the online store the server still ranks, with the spec's defaults (degraded):
    // ready, unless the caller requires features (`?require=features`).
    let store = match &state.reader {
        None => "none",
        Some(reader) => match tokio::time::timeout(STORE_PROBE, reader.ping()).await {
            Ok(Ok(())) => "ok",
            _ => "unreachable",
        },
    };
    let required = uri.query().is_some_and(|q| q.split('&').any(|p| p == "require=features"));
    let ready = !(required && store != "ok");
    let body = serde_json::json!({
        "ready": ready,
        "features": if store == "ok" { "online" } else { "defaults (degraded)" },
        "online_store": store,
        "model": { "name": m.name, "version": m.version, "provider": default.provider },
        "loaded_versions": state.models.loaded(),
        "extra": state.models.extra(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// The API's OpenAPI 3.1 document (`serving/openapi.json`; a test keeps it in step with the
/// request and response types).
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn render_metrics(State(state): State<Arc<AppState>>) -> Response {
    match &state.metrics {
        Some(render) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], (render.0)()).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", String::new(), "metrics are not recorded here".into()),
    }
}

/// Counts a request by route and status, with its duration.
fn observed(route: &'static str, started: Instant, response: Response) -> Response {
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        metrics::shed();
    }
    metrics::request(route, status.as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Counts a ranking request in flight until it is dropped (answered, or abandoned by a caller
/// who hung up).
pub(crate) struct InFlight;

impl InFlight {
    pub(crate) fn start() -> Self {
        metrics::in_flight(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::in_flight(-1.0);
    }
}

/// Reads a JSON body: another media type is 415, a body over `serving.max_body_bytes` 413, one
/// that does not arrive within `serving.body_timeout_ms` 408 (a client trickling its body
/// would otherwise hold its connection and a task for ever), all with the JSON error shape.
async fn json_body(headers: &HeaderMap, body: Body, config: &ServingConfig) -> Result<Bytes, Refused> {
    let refuse = |status: StatusCode, kind: &'static str, field: &'static str, message: String| {
        Err(Refused::new(status, kind, field, message))
    };
    let media = headers.get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).to_string());
    let json = media.as_deref().is_some_and(|m| {
        let m = m.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        m == "application/json" || m.ends_with("+json")
    });
    if !json {
        let message = match media {
            Some(given) => format!("the body is {given}; send application/json"),
            None => "no content-type header; send the body as application/json".to_string(),
        };
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "content-type", message);
    }
    let limit = config.max_body_bytes;
    let too_large = || format!("the body is larger than {limit} bytes (serving.max_body_bytes)");
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "", too_large());
    }
    let deadline = std::time::Duration::from_millis(config.body_timeout_ms);
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            // axum's error is the body's own: `Limited`'s when the limit was passed.
            if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
                refuse(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "", too_large())
            } else {
                refuse(StatusCode::BAD_REQUEST, "invalid_request", "", format!("the body could not be read: {e}"))
            }
        }
        Err(_) => refuse(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "",
            format!("the body did not arrive within {} ms (serving.body_timeout_ms)", config.body_timeout_ms),
        ),
    }
}

/// Why a request was not answered, whichever API it came by: HTTP answers with the JSON error
/// shape, gRPC with the status of the same meaning (`crate::grpc`).
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) field: String,
    pub(crate) message: String,
    /// Worth retrying in a second (`Retry-After`; gRPC: `grpc-retry-pushback-ms`): overload.
    pub(crate) retry: bool,
}

impl Refused {
    pub(crate) fn new(status: StatusCode, kind: &'static str, field: impl Into<String>, message: String) -> Self {
        Self { status, kind, field: field.into(), message, retry: false }
    }

    fn retry(self) -> Self {
        Self { retry: true, ..self }
    }

    /// No place for the request within `serving.admission_wait_ms`.
    pub(crate) fn overloaded(admission: &Admission, config: &ServingConfig) -> Self {
        let message = format!(
            "{} ranking requests are in progress (the limit now) and none finished within {} ms; retry later",
            admission.limit(),
            config.admission_wait_ms
        );
        Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", "", message).retry()
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = error(self.status, self.kind, self.field, self.message);
        if self.retry {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

async fn timed_rank(
    state: State<Arc<AppState>>,
    Extension(admission): Extension<Arc<Admission>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = rank_span(&headers, "/v1/rank");
    let response = admitted_rank(state, admission, headers, body).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// A ranking request's span, a child of the caller's (a W3C `traceparent` header) when it sent
/// one; none at all unless this process exports spans.
pub(crate) fn rank_span(headers: &HeaderMap, route: &'static str) -> tracing::Span {
    let span = trace_context::span(|| {
        tracing::info_span!(
            "rank",
            otel.kind = "server",
            http.route = route,
            http.response.status_code = tracing::field::Empty,
        )
    });
    trace_context::adopt(&span, headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes())));
    span
}

async fn admitted_rank(
    state: State<Arc<AppState>>,
    admission: Arc<Admission>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let body = match json_body(&headers, body, &state.config).await {
        Ok(body) => body,
        Err(refused) => return observed("rank", started, refused.into_response()),
    };
    // Before any parsing: a refused request costs next to nothing.
    let Some(_place) = admission.acquire().await else {
        return observed("rank", started, Refused::overloaded(&admission, &state.config).into_response());
    };
    let _in_flight = InFlight::start();
    observed("rank", started, rank_handler(state, headers, body).await)
}

async fn timed_click(state: State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let response = match json_body(&headers, body, &state.config).await {
        Ok(body) => click_handler(state, body).await,
        Err(refused) => refused.into_response(),
    };
    observed("click", started, response)
}

async fn click_handler(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let Some(sink) = &state.clicks else {
        let message = "this server does not publish clicks (no Kafka producer)".to_string();
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", String::new(), message);
    };
    match sink.accept(&body, state.config.max_event_time_skew_ms()).await {
        Ok(click) => {
            let body = serde_json::json!({ "accepted": click.click_id, "impression_id": click.impression_id });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(ClickError::Invalid(e)) => {
            error(StatusCode::BAD_REQUEST, "invalid_request", e.field.clone(), e.to_string())
        }
        Err(e @ ClickError::Unavailable(_)) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", String::new(), e.to_string());
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

async fn rank_handler(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    // The plain parser first; only a body it refuses is parsed again, tracking the path, to
    // name the field (tracking every field of every valid request cost 5% of the CPU).
    let parsing = trace_context::span(|| tracing::info_span!("parse", bytes = body.len())).entered();
    let request: RankRequest = match object::from_slice(&body) {
        Ok(request) => request,
        Err(_) => match serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body)) {
            Ok(Object(request)) => request,
            Err(e) => {
                let field = e.path().to_string();
                let field = if field == "." { String::new() } else { field };
                let message = match e.inner().classify() {
                    serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                        format!("the body is not valid JSON: {}", e.inner())
                    }
                    _ => format!("does not match the request schema: {}", e.inner()),
                };
                return error(StatusCode::BAD_REQUEST, "invalid_request", field, message);
            }
        },
    };
    drop(parsing);
    match answer(&state, request, headers.get(PIN_HEADER).map(HeaderValue::as_bytes), None).await {
        Ok(response) => Json(response).into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// A decoded ranking request, answered alike by both APIs: validated, routed (a pinned version,
/// else the user's rollout arm's), ranked, its impressions logged or its shadow copy started.
/// `cap` shortens the request's deadline (gRPC's `grpc-timeout`).
pub(crate) async fn answer(
    state: &Arc<AppState>,
    mut request: RankRequest,
    pin: Option<&[u8]>,
    cap: Option<std::time::Duration>,
) -> Result<RankResponse, Refused> {
    let invalid = |e: events::EventError| {
        Refused::new(StatusCode::BAD_REQUEST, "invalid_request", e.field.clone(), e.to_string())
    };
    request.validate(state.config.max_candidates).map_err(invalid)?;
    let skew = state.config.max_event_time_skew_ms();
    events::not_ahead("context.event_time_ms", request.context.event_time_ms, events::now_ms(), skew)
        .map_err(invalid)?;
    if let Some(cap) = cap {
        let asked = request.deadline_ms.map_or(state.config.default_deadline_ms, u64::from);
        let capped = asked.min(cap.as_millis().try_into().unwrap_or(u64::MAX)).max(1);
        request.deadline_ms = Some(u32::try_from(capped).unwrap_or(u32::MAX));
    }
    let route = match pin {
        None => state.models.route(&request.user_id),
        Some(value) => {
            let number = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<u64>().ok());
            let Some(number) = number else {
                let message = format!("the {PIN_HEADER} header must be a version number");
                return Err(Refused::new(StatusCode::BAD_REQUEST, "invalid_request", PIN_HEADER, message));
            };
            match state.models.version(number) {
                Some(version) => crate::manager::Route { version, assigned: None, shadow: None },
                None => {
                    let message = format!("version {number} is not loaded here; loaded: {:?}", state.models.loaded());
                    return Err(Refused::new(StatusCode::NOT_FOUND, "unknown_model_version", PIN_HEADER, message));
                }
            }
        }
    };
    let ranked = Instant::now();
    let (version, assigned) = (Arc::clone(&route.version), route.assigned);
    let answered = rank_response(state, &request, route).await;
    if let Some(assigned) = assigned {
        let seconds = ranked.elapsed().as_secs_f64();
        let status = answered.as_ref().map_or_else(|r| r.status.as_u16(), |_| 200);
        metrics::arm(assigned, version.manifest.version, status, seconds);
    }
    answered
}

/// Ranks a valid request as routed; the reply, or the refusal the batcher's error means.
async fn rank_response(
    state: &Arc<AppState>,
    request: &RankRequest,
    route: crate::manager::Route,
) -> Result<RankResponse, Refused> {
    let crate::manager::Route { version, assigned, shadow } = route;
    match rank(request, &version, (assigned, shadow), state.reader.as_ref(), &state.config).await {
        Ok(served) => {
            match served.shadow {
                // The copy is scored after the reply has gone; it logs the impressions then.
                Some(job) => {
                    let state = Arc::clone(state);
                    tokio::spawn(async move { job.run(state.models.shadow(), state.impressions.as_ref()).await });
                }
                None => {
                    if let Some(log) = &state.impressions {
                        // The messages carry this span's context to the ingester.
                        let logging = || tracing::info_span!("impression_log", impressions = served.impressions.len());
                        let _logging = trace_context::span(logging).entered();
                        log.log(served.impressions);
                    }
                }
            }
            Ok(served.response)
        }
        Err(RankError::Batch(e)) => {
            let message = e.to_string();
            Err(match e {
                BatchError::Overloaded(_) => {
                    Refused::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", "", message).retry()
                }
                BatchError::DeadlineExceeded => {
                    Refused::new(StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded", "", message)
                }
                BatchError::Closed => Refused::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "", message),
                BatchError::Inference(_) => {
                    let number = version.manifest.version;
                    let message = if state.models.inference_failed(number, &message) {
                        format!("version {number} {message}; the previous version serves from now on")
                    } else {
                        format!("version {number} {message}")
                    };
                    Refused::new(StatusCode::INTERNAL_SERVER_ERROR, "inference_failed", "", message)
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use adrank_contracts::{
        events::{Click, Impression},
        request::{Candidate, RankRequest, RequestContext},
    };

    use super::*;
    use crate::rank::{ModelRef, RankResponse, Ranked, Timing};

    /// The property names the document lists for the schema at `path`.
    fn properties(doc: &serde_json::Value, path: &str) -> Vec<String> {
        let mut names: Vec<String> =
            doc.pointer(path).and_then(|p| p.as_object()).map(|o| o.keys().cloned().collect()).unwrap_or_default();
        names.sort();
        names
    }

    /// The field names a value serialises with.
    fn fields(value: impl Serialize) -> Vec<String> {
        let mut names: Vec<String> =
            serde_json::to_value(value).unwrap().as_object().unwrap().keys().cloned().collect();
        names.sort();
        names
    }

    #[test]
    fn the_openapi_document_matches_the_types() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        for route in [
            "/v1/rank",
            "/v1/events/click",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/admin/rollout",
            "/admin/rollout/{action}",
        ] {
            assert!(doc["paths"].get(route).is_some(), "{route} is not documented");
        }
        let context = RequestContext { surface: "feed".into(), event_time_ms: 0, features: Default::default() };
        let candidate =
            Candidate { ad_id: "a".into(), advertiser_id: "v".into(), bid: 1.0, features: Default::default() };
        let request = RankRequest {
            request_id: "r".into(),
            user_id: "u".into(),
            context: context.clone(),
            candidates: vec![candidate.clone()],
            top_k: Some(1),
            deadline_ms: Some(1),
        };
        let schemas = "/components/schemas";
        assert_eq!(properties(&doc, &format!("{schemas}/RankRequest/properties")), fields(&request));
        let context_path = format!("{schemas}/RankRequest/properties/context/properties");
        let mut context_fields = fields(&context);
        context_fields.push("features".into());
        context_fields.sort();
        assert_eq!(properties(&doc, &context_path), context_fields);
        let candidate_path = format!("{schemas}/RankRequest/properties/candidates/items/properties");
        let mut candidate_fields = fields(&candidate);
        candidate_fields.push("features".into());
        candidate_fields.sort();
        assert_eq!(properties(&doc, &candidate_path), candidate_fields);
        let ranked = Ranked {
            ad_id: "a".into(),
            advertiser_id: "v".into(),
            bid: 1.0,
            pctr: 0.1,
            expected_value: 0.1,
            shown_pctr: Some(0.1),
            impression_id: Some("r:0".into()),
            position: 0,
        };
        let timing =
            Timing { features_ms: 0.0, queue_ms: 0.0, inference_ms: 0.0, shown_ms: 0.0, total_ms: 0.0, batch_rows: 1 };
        let response = RankResponse {
            request_id: "r".into(),
            model: ModelRef { name: "ctr".into(), version: 1, arm: Some(adrank_registry::Arm::Candidate) },
            ranked: vec![ranked.clone()],
            degraded: false,
            timing,
        };
        assert_eq!(properties(&doc, &format!("{schemas}/RankResponse/properties")), fields(&response));
        assert_eq!(properties(&doc, &format!("{schemas}/ModelRef/properties")), fields(&response.model));
        assert_eq!(
            properties(&doc, &format!("{schemas}/RankResponse/properties/ranked/items/properties")),
            fields(&ranked)
        );
        assert_eq!(properties(&doc, &format!("{schemas}/RankResponse/properties/timing/properties")), fields(timing));
        let start = crate::admin::Start { candidate: "2".into(), plan: Some(vec![0, 100]), reason: Some("r".into()) };
        assert_eq!(properties(&doc, &format!("{schemas}/RolloutStart/properties")), fields(&start));
        let steer = crate::admin::Steer { expect: Some(1), reason: Some("r".into()) };
        assert_eq!(properties(&doc, &format!("{schemas}/RolloutSteer/properties")), fields(&steer));
        let click = Click::on(&Impression::example("i", Default::default()), "c".into(), 1);
        assert_eq!(properties(&doc, &format!("{schemas}/Click/properties")), fields(&click));
    }
}
