//! A session: the outcome of one successful authentication, kept in the
//! store so that any replica can resume it, and held by each socket that
//! uses it so the hot path never asks the store who a socket is.

use serde::{Deserialize, Serialize};

use crate::{
    auth::{Claims, Role, VehicleScope},
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
    /// A scoped viewer's vehicles (the token's `vehicles` claim). Sessions
    /// stored before scopes existed have none and stay unscoped, as their
    /// tokens were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicles: Option<VehicleScope>,
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
            vehicles: claims.vehicles,
            expires_at,
        }
    }

    /// Whether this session may see `vehicle`'s positions, presence and
    /// geofence events.
    pub fn may_watch(&self, vehicle: &str) -> bool {
        self.vehicles.as_ref().is_none_or(|s| s.allows(vehicle))
    }

    /// Whether this is a scoped viewer's session.
    pub fn is_scoped(&self) -> bool {
        self.vehicles.is_some()
    }

    /// Milliseconds left, never negative.
    pub fn remaining_ms(&self, now_ms: i64) -> i64 {
        (self.expires_at - now_ms).max(0)
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at <= now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_stored_before_scopes_read_as_unscoped() {
        let old = r#"{"sessionId":"x","sub":"rider","fleet":"demo","role":"viewer","expiresAt":1}"#;
        let s: Session = serde_json::from_str(old).unwrap();
        assert!(!s.is_scoped() && s.may_watch("anything"));
        let scoped =
            r#"{"sessionId":"x","sub":"rider","fleet":"demo","role":"viewer","vehicles":["bus-1"],"expiresAt":1}"#;
        let s: Session = serde_json::from_str(scoped).unwrap();
        assert!(s.may_watch("bus-1") && !s.may_watch("bus-2"));
        assert_eq!(serde_json::to_string(&s).unwrap(), scoped);
        // A stored scope that does not check out is not silently dropped.
        let bad = r#"{"sessionId":"x","sub":"rider","fleet":"demo","role":"viewer","vehicles":[],"expiresAt":1}"#;
        assert!(serde_json::from_str::<Session>(bad).is_err());
    }
}
