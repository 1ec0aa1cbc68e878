//! A session: the outcome of one successful authentication, kept in the
//! store so that any replica can resume it, and held by each socket that
//! uses it so the hot path never asks the store who a socket is.

use serde::{Deserialize, Serialize};

use crate::{
    auth::{Claims, Role},
    ids,
};

/// The session object of section 3, as clients see it and as it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub session_id: String,
    pub sub: String,
    pub fleet: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle: Option<String>,
    /// Ms since epoch.
    pub expires_at: i64,
}

impl Session {
    /// A new session for verified claims, living `min(ttl, exp − now)`.
    pub fn new(claims: Claims, max_ttl_secs: u64, now_ms: i64) -> Self {
        let cap = now_ms.saturating_add(i64::try_from(max_ttl_secs).unwrap_or(i64::MAX).saturating_mul(1000));
        let expires_at = claims.exp.saturating_mul(1000).min(cap);
        Self {
            session_id: ids::new_session_id(),
            sub: claims.sub,
            fleet: claims.fleet,
            role: claims.role,
            vehicle: claims.vehicle,
            expires_at,
        }
    }

    /// Milliseconds left, never negative.
    pub fn remaining_ms(&self, now_ms: i64) -> i64 {
        (self.expires_at - now_ms).max(0)
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at <= now_ms
    }
}
