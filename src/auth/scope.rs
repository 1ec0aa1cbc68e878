//! Scoped viewer tokens (section 2, the `vehicles` claim): the set of
//! vehicles a rider app's token may watch, how the claim is read, and the
//! one question every read path asks of it.
//!
//! A scope narrows what a viewer sees; it never widens anything. Every path
//! that can show a position, a presence change or (once they exist) a
//! geofence event to a client checks it: `subscribe` and `providerjoin`
//! (src/gateway/viewer.rs), room joins (src/gateway/rooms.rs), re-authentication
//! (src/gateway/auth.rs) and the HTTP reads (src/http/api.rs). Socket
//! deliveries go through fleet, vehicle and box rooms, and a scoped socket
//! only ever joins the rooms of its own vehicles, so fan-out and presence
//! need no check of their own.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids;

/// Most vehicle ids one token may name: a route's or a depot's buses, not a
/// fleet (a token naming a whole fleet's vehicles should be unscoped).
pub const MAX_SCOPED_VEHICLES: usize = 256;

/// The vehicles a scoped viewer may watch: never empty, at most
/// [`MAX_SCOPED_VEHICLES`], every id in the vehicle id grammar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct VehicleScope(BTreeSet<String>);

/// Why a `vehicles` claim (or `--vehicles`, or the demo endpoint's field)
/// was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("must be an array of vehicle ids")]
    NotAnArray,
    #[error("must name at least one vehicle (omit it for the whole fleet)")]
    Empty,
    #[error("at most {MAX_SCOPED_VEHICLES} vehicle ids")]
    TooMany,
    #[error("items must be vehicle ids (1–64 characters of [A-Za-z0-9._:-])")]
    BadId,
}

impl VehicleScope {
    /// Reads the claim's JSON value. `null` is refused like any other
    /// non-array: an issuer that meant to scope a token must not mint one
    /// that sees the whole fleet.
    pub fn from_claim(value: &Value) -> Result<Self, ScopeError> {
        let Value::Array(items) = value else { return Err(ScopeError::NotAnArray) };
        let ids = items.iter().map(|v| v.as_str().map(str::to_owned).ok_or(ScopeError::BadId));
        Self::from_ids(ids.collect::<Result<Vec<_>, _>>()?)
    }

    /// Checks a list of ids (duplicates are kept once).
    pub fn from_ids(ids: Vec<String>) -> Result<Self, ScopeError> {
        if ids.is_empty() {
            return Err(ScopeError::Empty);
        }
        if ids.len() > MAX_SCOPED_VEHICLES {
            return Err(ScopeError::TooMany);
        }
        if !ids.iter().all(|v| ids::is_valid_id(v)) {
            return Err(ScopeError::BadId);
        }
        Ok(Self(ids.into_iter().collect()))
    }

    /// Whether the scope holds `vehicle`.
    pub fn allows(&self, vehicle: &str) -> bool {
        self.0.contains(vehicle)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Vec<String>> for VehicleScope {
    type Error = ScopeError;

    fn try_from(ids: Vec<String>) -> Result<Self, ScopeError> {
        Self::from_ids(ids)
    }
}

impl From<VehicleScope> for Vec<String> {
    fn from(s: VehicleScope) -> Self {
        s.0.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn claims_are_checked() {
        let s = VehicleScope::from_claim(&json!(["bus-2", "bus-1", "bus-2"])).unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), ["bus-1", "bus-2"]);
        assert!(s.allows("bus-1") && !s.allows("bus-3"));
        assert_eq!(VehicleScope::from_claim(&json!(null)), Err(ScopeError::NotAnArray));
        assert_eq!(VehicleScope::from_claim(&json!("bus-1")), Err(ScopeError::NotAnArray));
        assert_eq!(VehicleScope::from_claim(&json!([])), Err(ScopeError::Empty));
        assert_eq!(VehicleScope::from_claim(&json!(["bus 1"])), Err(ScopeError::BadId));
        assert_eq!(VehicleScope::from_claim(&json!([7])), Err(ScopeError::BadId));
        let many: Vec<String> = (0..=MAX_SCOPED_VEHICLES).map(|i| format!("v{i}")).collect();
        assert_eq!(VehicleScope::from_claim(&json!(many)), Err(ScopeError::TooMany));
        VehicleScope::from_claim(&json!(many[..MAX_SCOPED_VEHICLES])).unwrap();
    }

    #[test]
    fn stored_form_is_a_plain_array_and_is_checked_on_read() {
        let s = VehicleScope::from_ids(vec!["b".into(), "a".into()]).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"["a","b"]"#);
        assert_eq!(serde_json::from_str::<VehicleScope>(r#"["a","b"]"#).unwrap(), s);
        assert!(serde_json::from_str::<VehicleScope>("[]").is_err());
    }
}
