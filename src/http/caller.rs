//! The caller of an HTTP API route: a bearer token, verified like a
//! handshake token, checked against the fleet in the path.

use std::sync::Arc;

use axum::{extract::FromRequestParts, http::request::Parts};

use super::HttpState;
use crate::{
    auth::{Claims, Role},
    clock,
    error::ApiError,
    metrics::{AuthStage, names},
    session::Session,
};

/// Verified claims of the request's bearer token.
pub struct Caller(pub Claims);

impl FromRequestParts<Arc<HttpState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<HttpState>) -> Result<Self, ApiError> {
        let verified = match bearer(parts) {
            Ok(token) => state.backend.authenticator().authenticate(token).await,
            Err(e) => Err(e),
        };
        match verified {
            Ok(claims) => Ok(Caller(claims)),
            Err(e) => {
                metrics::counter!(names::AUTH_FAILURES, "stage" => AuthStage::Http, "code" => e.code.as_str())
                    .increment(1);
                Err(e)
            }
        }
    }
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let missing = || ApiError::new(crate::error::ErrorCode::Unauthenticated, "Authorization: Bearer <token> required");
    let header =
        parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|h| h.to_str().ok()).ok_or_else(missing)?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(missing)
}

impl Caller {
    /// The caller acts in `fleet`, with one of `roles`.
    pub fn require(&self, fleet: &str, roles: &[Role]) -> Result<(), ApiError> {
        if self.0.fleet != fleet {
            return Err(ApiError::forbidden("the token belongs to another fleet"));
        }
        if !roles.contains(&self.0.role) {
            return Err(ApiError::forbidden(format!("role {} may not do this", self.0.role.as_str())));
        }
        Ok(())
    }

    /// Whether the caller may read `vehicle` (a scoped viewer only its own).
    /// Geofence reads (section 11), once they exist, must narrow their
    /// `inside` lists with this too.
    pub fn may_watch(&self, vehicle: &str) -> bool {
        self.0.vehicles.as_ref().is_none_or(|s| s.allows(vehicle))
    }

    /// A request-scoped session, for the shared publish path (never stored).
    pub fn session(&self) -> Session {
        Session {
            session_id: String::new(),
            sub: self.0.sub.clone(),
            fleet: self.0.fleet.clone(),
            role: self.0.role,
            vehicle: self.0.vehicle.clone(),
            vehicles: self.0.vehicles.clone(),
            expires_at: self.0.exp.saturating_mul(1000).max(clock::now_ms()),
        }
    }
}
