//! The HTTP side of the one listener: the API of section 7, health and
//! readiness probes, the live map page and the demo token endpoint.
//! Socket.IO is layered onto the same router by the server.

pub mod api;
mod backend;
mod caller;
mod geofences;
mod json;
pub mod openapi;
mod pages;
mod telemetry;
mod webhooks;

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use backend::Backend;
pub use json::JsonBody;

use crate::{
    auth::{Claims, Role},
    error::{ApiError, Envelope, ErrorCode},
    ids,
};

/// Shared by the HTTP handlers.
pub struct HttpState {
    pub backend: Arc<dyn Backend>,
    /// Cancelled when shutdown begins, so load balancers stop sending traffic.
    pub draining: CancellationToken,
    /// Section 12's webhook registrations.
    pub webhooks: Arc<crate::outputs::Webhooks>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let result: Result<(), ApiError> = Err(self);
        (status, axum::Json(Envelope::from_result(&result))).into_response()
    }
}

/// A successful reply in the envelope.
pub struct Reply<T>(pub T);

/// What a `DELETE` answers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Deleted {
    deleted: bool,
}

impl Deleted {
    const YES: Self = Self { deleted: true };
}

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        let result: Result<T, ApiError> = Ok(self.0);
        axum::Json(Envelope::from_result(&result)).into_response()
    }
}

pub fn router(state: Arc<HttpState>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/fleets/{fleet}/vehicles/{vehicle}/location", put(api::put_location))
        .route("/api/v1/fleets/{fleet}/locations", post(api::post_locations))
        .route("/api/v1/fleets/{fleet}/vehicles", get(api::get_vehicles))
        .route("/api/v1/fleets/{fleet}/vehicles/{vehicle}", get(api::get_vehicle))
        .route("/api/v1/fleets/{fleet}/rooms/{room}/messages", post(api::post_message))
        .route("/api/v1/sessions/{session_id}", delete(api::delete_session))
        .merge(geofence_routes(&state))
        .route("/api/v1/fleets/{fleet}/webhooks", get(webhooks::list_webhooks))
        .route("/api/v1/fleets/{fleet}/webhooks/{id}", put(webhooks::put_webhook).delete(webhooks::delete_webhook))
        .merge(pages::routes());
    if state.backend.config().demo {
        router = router.route("/api/v1/demo/token", post(demo_token));
    }
    router.fallback(not_found).layer(axum::middleware::from_fn(telemetry::track)).with_state(state)
}

/// Section 11's routes. A geofence of `FLEETGATE_GEOFENCE_MAX_VERTICES`
/// vertices is larger than the general body limit allows, so its writes
/// get a limit of their own, sized to hold one.
fn geofence_routes(state: &HttpState) -> Router<Arc<HttpState>> {
    let config = state.backend.config();
    let body_max = config.geofence_max_vertices.saturating_mul(64).saturating_add(config.max_message_bytes);
    Router::new()
        .route("/api/v1/fleets/{fleet}/geofences", get(geofences::list_geofences))
        .route(
            "/api/v1/fleets/{fleet}/geofences/{id}",
            get(geofences::get_geofence).put(geofences::put_geofence).delete(geofences::delete_geofence),
        )
        .layer(axum::extract::DefaultBodyLimit::max(body_max))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

async fn healthz() -> Reply<Status> {
    Reply(Status { status: "ok" })
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Result<Reply<Status>, ApiError> {
    if state.draining.is_cancelled() {
        return Err(ApiError::new(ErrorCode::Unavailable, "shutting down"));
    }
    if !state.backend.authenticator().is_ready() {
        return Err(ApiError::new(ErrorCode::Unavailable, "token keys not fetched yet (FLEETGATE_JWT_JWKS_URL)"));
    }
    state.backend.store().ping().await.map_err(|e| {
        tracing::debug!(error = %e, "not ready");
        ApiError::unavailable()
    })?;
    Ok(Reply(Status { status: "ready" }))
}

#[derive(Deserialize)]
struct DemoTokenRequest {
    fleet: Option<String>,
    role: Option<String>,
    sub: Option<String>,
    vehicle: Option<String>,
    /// A scoped viewer token's vehicles (section 2).
    vehicles: Option<Vec<String>>,
    ttl: Option<u64>,
}

#[derive(Serialize)]
struct DemoToken {
    token: String,
}

/// Longest lifetime of a demo token.
const MAX_DEMO_TTL_SECS: u64 = 86_400;

async fn demo_token(
    State(state): State<Arc<HttpState>>,
    JsonBody(req): JsonBody<DemoTokenRequest>,
) -> Result<Reply<DemoToken>, ApiError> {
    let fleet = req.fleet.unwrap_or_else(|| crate::demo::FLEET.to_owned());
    let role = match req.role.as_deref() {
        None => Role::Viewer,
        Some(r) => Role::parse(r).ok_or_else(|| ApiError::invalid("role: vehicle, viewer or dispatcher"))?,
    };
    let sub = req.sub.unwrap_or_else(|| format!("demo-{}", &ids::new_session_id()[..8]));
    let ttl = req.ttl.unwrap_or(3600).clamp(1, MAX_DEMO_TTL_SECS);
    let claims =
        Claims::issue(sub, fleet, role, req.vehicle, req.vehicles, ttl).map_err(|e| ApiError::invalid(e.message))?;
    let b = &state.backend;
    let token = b.authenticator().mint(&claims, b.config()).map_err(|e| {
        tracing::warn!(error = %e, "demo token not minted");
        ApiError::unavailable()
    })?;
    Ok(Reply(DemoToken { token }))
}
