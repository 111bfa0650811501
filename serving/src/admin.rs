//! The admin API: a model's rollout over HTTP, the operations of `adrank rollout`.
//!
//! ```text
//! GET  /admin/rollout                                      the current rollout document
//! POST /admin/rollout/start    {"candidate": "2", "plan": [0, 5, 25, 50, 100], "reason": "…"}
//! POST /admin/rollout/{advance|pause|resume|promote|abort} {"expect": 7, "reason": "…"}
//! ```
//!
//! Every request needs `Authorization: Bearer <serving.admin_token>` (compared in constant
//! time); without a configured token the admin API is off (404). A refused request changes
//! nothing: 401 without the right token, 400 for a body that is not the documented object, 404
//! for an unknown version, 409 for an action the rollout's state does not allow or a document
//! that changed since `expect`. The change goes to the rollout's audit log with who (`admin
//! API`) and why, and this replica follows it at once.

use std::sync::Arc;

use adrank_contracts::events::object::{self, Object};
use adrank_registry::{Action, Decision, Error as RegistryError, rollout::DEFAULT_PLAN};
use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use crate::api::{AppState, error};

/// The admin API's shared secret. Its `Debug` hides it; it is never serialised.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "(none)" } else { "(set)" })
    }
}

impl AdminToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `given` is the token, in time that does not depend on where they differ.
    fn matches(&self, given: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        // The length is no secret worth the trouble; the bytes are compared all the way.
        expected.len() == given.len() && expected.iter().zip(given).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
    }
}

/// The body of `POST /admin/rollout/start` (`RolloutStart` in serving/openapi.json).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Start {
    /// A version number, an alias or `latest`.
    pub(crate) candidate: String,
    #[serde(default)]
    pub(crate) plan: Option<Vec<u8>>,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

/// The body of the other actions, which may be empty (`RolloutSteer`).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Steer {
    #[serde(default)]
    pub(crate) expect: Option<u64>,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

/// `None` when the request may act; otherwise the refusal.
fn refuse_unauthorised(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    if !state.config.admin_token.is_set() {
        let message = "the admin API is off: set serving.admin_token".to_string();
        return Some(error(StatusCode::NOT_FOUND, "not_found", String::new(), message));
    }
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if given.is_some_and(|token| state.config.admin_token.matches(token)) {
        return None;
    }
    let message = "the admin API needs `Authorization: Bearer <serving.admin_token>`".to_string();
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", "authorization".into(), message);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// Reads a body as the documented object (the default one for an empty body); the refusal
/// says why not.
fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    object::from_slice::<Object<T>>(bytes)
        .map(|Object(body)| body)
        .map_err(|e| format!("the body is not the documented object: {e}"))
}

fn bad_body(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", String::new(), message)
}

/// A registry refusal as the client should see it.
fn registry_error(e: RegistryError) -> Response {
    let message = e.to_string();
    match e {
        RegistryError::Rollout(_) | RegistryError::RolloutChanged { .. } | RegistryError::Conflict { .. } => {
            error(StatusCode::CONFLICT, "conflict", String::new(), message)
        }
        RegistryError::NotFound(_) | RegistryError::InvalidName(_) => {
            error(StatusCode::NOT_FOUND, "not_found", String::new(), message)
        }
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", String::new(), message),
    }
}

fn decision(expected_seq: u64, reason: Option<String>) -> Decision {
    Decision {
        expected_seq,
        by: "admin API".into(),
        reason: reason.unwrap_or_else(|| "admin API".into()),
        figures: Default::default(),
    }
}

/// `GET /admin/rollout`.
pub(crate) async fn status(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refuse_unauthorised(&state, &headers) {
        return refusal;
    }
    match state.models.registry().rollout(state.models.name()).await {
        Ok(rollout) => Json(rollout).into_response(),
        Err(e) => registry_error(e),
    }
}

/// `POST /admin/rollout/{action}`.
pub(crate) async fn act(
    State(state): State<Arc<AppState>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    if let Some(refusal) = refuse_unauthorised(&state, &headers) {
        return refusal;
    }
    let (registry, name) = (state.models.registry(), state.models.name());
    let current = match registry.rollout(name).await {
        Ok(current) => current,
        Err(e) => return registry_error(e),
    };
    let result = if action == "start" {
        let start: Start = match body(&bytes) {
            Ok(start) => start,
            Err(message) => return bad_body(message),
        };
        if start.candidate.is_empty() {
            let message = "names no candidate version".to_string();
            return error(StatusCode::BAD_REQUEST, "invalid_request", "candidate".into(), message);
        }
        match registry.resolve(name, &start.candidate).await {
            Err(e) => return registry_error(e),
            Ok(candidate) => {
                let plan = start.plan.unwrap_or_else(|| DEFAULT_PLAN.to_vec());
                let decision = decision(current.as_ref().map_or(0, |r| r.seq), start.reason);
                registry.start_rollout(name, candidate, plan, decision).await
            }
        }
    } else {
        let action = match action.as_str() {
            "advance" => Action::Advance,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "promote" => Action::Promote,
            "abort" => Action::RollBack,
            other => {
                let message = format!("`{other}` is no rollout action: start, advance, pause, resume, promote, abort");
                return error(StatusCode::NOT_FOUND, "not_found", String::new(), message);
            }
        };
        let steer: Steer = match body(&bytes) {
            Ok(steer) => steer,
            Err(message) => return bad_body(message),
        };
        let Some(expected) = steer.expect.or(current.as_ref().map(|r| r.seq)) else {
            let message = format!("`{name}` has no rollout");
            return error(StatusCode::CONFLICT, "conflict", String::new(), message);
        };
        registry.act_on_rollout(name, action, decision(expected, steer.reason)).await
    };
    match result {
        Ok(rollout) => {
            // This replica follows at once; the others at their next poll.
            if let Err(e) = state.models.refresh().await {
                tracing::warn!(error = %e, "cannot refresh after a rollout change; the next poll will");
            }
            Json(rollout).into_response()
        }
        Err(e) => registry_error(e),
    }
}
