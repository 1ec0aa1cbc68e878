//! The claims fleetgate reads from a token and the checks they must pass.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::scope::VehicleScope;
use crate::{error::ApiError, error::ErrorCode, ids};

/// What a principal may do inside its fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publishes the position of its own vehicle.
    Vehicle,
    /// Watches positions.
    Viewer,
    /// Watches, publishes for any vehicle of the fleet, and administers it.
    Dispatcher,
}

impl Role {
    /// Every role, as the metrics pre-register them.
    pub const ALL: [Role; 3] = [Role::Vehicle, Role::Viewer, Role::Dispatcher];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Vehicle => "vehicle",
            Role::Viewer => "viewer",
            Role::Dispatcher => "dispatcher",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "vehicle" => Some(Role::Vehicle),
            "viewer" => Some(Role::Viewer),
            "dispatcher" => Some(Role::Dispatcher),
            _ => None,
        }
    }
}

/// Verified claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub fleet: String,
    pub role: Role,
    /// For vehicle tokens the vehicle it publishes for; `None` for other roles.
    pub vehicle: Option<String>,
    /// For scoped viewer tokens the only vehicles it may watch; `None`
    /// watches the whole fleet.
    pub vehicles: Option<VehicleScope>,
    /// Expiry, seconds since epoch.
    pub exp: i64,
}

impl Claims {
    /// Claims for a new token living `ttl_secs`, checked by the same rules
    /// as a token being verified, so nothing is minted that would be refused.
    pub fn issue(
        sub: String,
        fleet: String,
        role: Role,
        vehicle: Option<String>,
        vehicles: Option<Vec<String>>,
        ttl_secs: u64,
    ) -> Result<Claims, ApiError> {
        let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX / 4000);
        RawClaims {
            sub: Some(sub),
            fleet: Some(fleet),
            role: Some(role.as_str().to_owned()),
            vehicle: vehicle.filter(|_| role == Role::Vehicle),
            vehicles: vehicles.map(Value::from),
            exp: Some((crate::clock::now_ms() / 1000).saturating_add(ttl)),
        }
        .validate()
    }
}

/// Claims as they arrive, before their values are checked.
#[derive(Debug, Deserialize)]
pub(super) struct RawClaims {
    sub: Option<String>,
    fleet: Option<String>,
    role: Option<String>,
    vehicle: Option<String>,
    /// Kept as JSON so that `null` or a wrong type gets its own message
    /// instead of an unreadable token.
    #[serde(default, deserialize_with = "present")]
    vehicles: Option<Value>,
    exp: Option<i64>,
}

/// `Some` for any value that is there, `null` included.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl RawClaims {
    pub(super) fn validate(self) -> Result<Claims, ApiError> {
        let bad = |m: &'static str| ApiError::new(ErrorCode::InvalidToken, m);
        let sub =
            self.sub.filter(|s| !s.is_empty() && s.len() <= 256).ok_or_else(|| bad("missing or bad claim sub"))?;
        let fleet = self.fleet.filter(|f| ids::is_valid_id(f)).ok_or_else(|| bad("missing or bad claim fleet"))?;
        let role = self.role.as_deref().and_then(Role::parse).ok_or_else(|| bad("missing or bad claim role"))?;
        let exp = self.exp.ok_or_else(|| bad("missing claim exp"))?;
        let vehicle = match role {
            Role::Vehicle => {
                let v = self.vehicle.unwrap_or_else(|| sub.clone());
                if !ids::is_valid_id(&v) {
                    return Err(bad("bad claim vehicle"));
                }
                Some(v)
            }
            _ => None,
        };
        // Only a viewer may be scoped: the claim on a vehicle or dispatcher
        // token says its issuer meant a restriction that those roles cannot
        // carry, so the token is refused rather than honoured unscoped.
        let vehicles = match (self.vehicles, role) {
            (None, _) => None,
            (Some(_), Role::Vehicle | Role::Dispatcher) => {
                return Err(bad("claim vehicles: only viewer tokens may carry it"));
            }
            (Some(v), Role::Viewer) => Some(
                VehicleScope::from_claim(&v)
                    .map_err(|e| ApiError::new(ErrorCode::InvalidToken, format!("claim vehicles: {e}")))?,
            ),
        };
        Ok(Claims { sub, fleet, role, vehicle, vehicles, exp })
    }
}
