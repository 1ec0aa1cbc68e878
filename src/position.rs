//! Positions: parsing and validating a `locationupdate` in any of its
//! accepted forms (section 5.1 and the bus-app form of 5.5), and the
//! position event every subscriber receives (section 5.2).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{error::ApiError, ids};

/// A validated update as the client sent it, before the server decides the
/// vehicle id (from the token) and the fix time (server time when absent).
/// Its schema is the HTTP API's position body; [`PositionUpdate::parse`]
/// reads the other forms too.
#[derive(Debug, Clone, PartialEq, utoipa::ToSchema)]
#[schema(
    rename_all = "camelCase",
    description = "A position body (section 5.1). For the single-vehicle route the vehicle comes from the path; \
                   `lat`/`lon` may instead be a GeoJSON `location`."
)]
pub struct PositionUpdate {
    /// Only in batches (or equal to the path's vehicle).
    pub vehicle_id: Option<String>,
    #[schema(value_type = Option<f64>, required = false, example = 37.5665)]
    pub lat: f64,
    #[schema(value_type = Option<f64>, required = false, example = 126.978)]
    pub lon: f64,
    /// Fix time, ms since epoch; server time when absent.
    pub ts: Option<i64>,
    pub heading: Option<f64>,
    pub speed: Option<f64>,
    pub accuracy: Option<f64>,
}

/// The bounds a fix time must fall within.
#[derive(Debug, Clone, Copy)]
pub struct TimeWindow {
    pub max_future_ms: i64,
    pub max_age_ms: i64,
}

/// The position event of section 5.2, which is also what the store keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Position {
    pub fleet: String,
    pub vehicle_id: String,
    pub lat: f64,
    pub lon: f64,
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    pub received_at: i64,
}

/// The few fields fan-out needs from an encoded position, read without
/// building the whole event again.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PositionKey<'a> {
    #[serde(borrow)]
    pub fleet: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub vehicle_id: std::borrow::Cow<'a, str>,
    pub lat: f64,
    pub lon: f64,
    pub ts: i64,
    /// When the accepting replica received it (for the delivery-lag metric).
    #[serde(default)]
    pub received_at: i64,
}

impl PositionUpdate {
    /// Parses a `locationupdate` (or an HTTP body, with `allow_vehicle_id`
    /// false when the id comes from the path).
    pub fn parse(payload: &Value) -> Result<Self, ApiError> {
        let obj = payload.as_object().ok_or_else(|| ApiError::invalid("payload: must be an object"))?;
        let vehicle_id = vehicle_id(obj)?;
        let (lat, lon) = coordinates(obj)?;
        if lat == 0.0 && lon == 0.0 {
            return Err(ApiError::invalid("lat/lon: (0, 0) is not a position (null island)"));
        }
        let ts = match present(obj, "ts") {
            None => None,
            Some(v) => Some(integer(v).ok_or_else(|| ApiError::invalid("ts: must be an integer of ms since epoch"))?),
        };
        let heading =
            optional_number(obj, "heading", |h| (0.0..360.0).contains(&h), "heading: must be a number in [0, 360)")?;
        let speed = optional_number(obj, "speed", |s| s >= 0.0, "speed: must be a number ≥ 0 (m/s)")?;
        let accuracy = optional_number(obj, "accuracy", |a| a >= 0.0, "accuracy: must be a number ≥ 0 (m)")?;
        Ok(Self { vehicle_id, lat, lon, ts, heading, speed, accuracy })
    }

    /// Resolves the fix time against server time and checks its window.
    pub fn fix_time(&self, now_ms: i64, window: TimeWindow) -> Result<i64, ApiError> {
        let ts = self.ts.unwrap_or(now_ms);
        if ts > now_ms.saturating_add(window.max_future_ms) {
            return Err(ApiError::invalid(format!("ts: more than {} ms ahead of server time", window.max_future_ms)));
        }
        if ts < now_ms.saturating_sub(window.max_age_ms) {
            return Err(ApiError::invalid(format!("ts: more than {} ms in the past", window.max_age_ms)));
        }
        Ok(ts)
    }
}

/// A field that is present and not `null` (apps send `null` for "unknown").
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn vehicle_id(obj: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let read = |key: &str| -> Result<Option<&str>, ApiError> {
        match present(obj, key) {
            None => Ok(None),
            Some(Value::String(s)) if ids::is_valid_id(s) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(format!("{key}: must be 1–64 characters of [A-Za-z0-9._:-]"))),
        }
    };
    match (read("vehicleId")?, read("busId")?) {
        (Some(a), Some(b)) if a != b => Err(ApiError::invalid("vehicleId: differs from busId")),
        (Some(a), _) | (None, Some(a)) => Ok(Some(a.to_owned())),
        (None, None) => Ok(None),
    }
}

fn coordinates(obj: &Map<String, Value>) -> Result<(f64, f64), ApiError> {
    if present(obj, "lat").is_some() || present(obj, "lon").is_some() {
        let lat = strict_number(present(obj, "lat"), "lat")?;
        let lon = strict_number(present(obj, "lon"), "lon")?;
        return in_range(lat, lon, "lat", "lon");
    }
    let Some(location) = present(obj, "location") else {
        return Err(ApiError::invalid("lat: required (or location)"));
    };
    let location = location
        .as_object()
        .ok_or_else(|| ApiError::invalid("location: must be a GeoJSON Point or {latitude, longitude}"))?;
    if let Some(kind) = location.get("type") {
        if kind != "Point" {
            return Err(ApiError::invalid("location.type: must be \"Point\""));
        }
        let coords = location
            .get("coordinates")
            .and_then(Value::as_array)
            .filter(|c| c.len() == 2 || c.len() == 3)
            .ok_or_else(|| ApiError::invalid("location.coordinates: must be [lon, lat]"))?;
        let lon = strict_number(coords.first(), "location.coordinates[0]")?;
        let lat = strict_number(coords.get(1), "location.coordinates[1]")?;
        return in_range(lat, lon, "location.coordinates[1]", "location.coordinates[0]");
    }
    // The bus-app form, whose apps send coordinates as numbers or numeric strings.
    let lat = lenient_number(location.get("latitude"), "location.latitude")?;
    let lon = lenient_number(location.get("longitude"), "location.longitude")?;
    in_range(lat, lon, "location.latitude", "location.longitude")
}

fn in_range(lat: f64, lon: f64, lat_name: &str, lon_name: &str) -> Result<(f64, f64), ApiError> {
    if !(-90.0..=90.0).contains(&lat) {
        return Err(ApiError::invalid(format!("{lat_name}: must be in [-90, 90]")));
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(ApiError::invalid(format!("{lon_name}: must be in [-180, 180]")));
    }
    Ok((lat, lon))
}

fn strict_number(v: Option<&Value>, name: &str) -> Result<f64, ApiError> {
    match v {
        Some(Value::Number(n)) => n.as_f64().filter(|f| f.is_finite()),
        _ => None,
    }
    .ok_or_else(|| ApiError::invalid(format!("{name}: must be a finite number")))
}

fn lenient_number(v: Option<&Value>, name: &str) -> Result<f64, ApiError> {
    match v {
        Some(Value::String(s)) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        Some(Value::Number(n)) => n.as_f64().filter(|f| f.is_finite()),
        _ => None,
    }
    .ok_or_else(|| ApiError::invalid(format!("{name}: must be a number or a numeric string")))
}

fn optional_number(
    obj: &Map<String, Value>,
    key: &str,
    ok: impl Fn(f64) -> bool,
    msg: &'static str,
) -> Result<Option<f64>, ApiError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() && ok(f) => Ok(Some(f)),
            _ => Err(ApiError::invalid(msg)),
        },
        Some(_) => Err(ApiError::invalid(msg)),
    }
}

/// An integral JSON number (JS clients may send `1.7e12`, which is integral).
fn integer(v: &Value) -> Option<i64> {
    let Value::Number(n) = v else { return None };
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    // The bounds keep the cast exact and within i64.
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<PositionUpdate, ApiError> {
        PositionUpdate::parse(&v)
    }

    fn err(v: Value) -> String {
        parse(v).unwrap_err().message.into_owned()
    }

    #[test]
    fn accepts_the_three_forms() {
        let a =
            parse(json!({"vehicleId": "bus-12", "lat": 37.5665, "lon": 126.978, "ts": 1, "heading": 90.0})).unwrap();
        assert_eq!((a.lat, a.lon, a.ts, a.heading), (37.5665, 126.978, Some(1), Some(90.0)));
        let b = parse(json!({"busId": "bus-12", "location": {"type": "Point", "coordinates": [126.978, 37.5665]}}))
            .unwrap();
        assert_eq!((b.vehicle_id.as_deref(), b.lat, b.lon), (Some("bus-12"), 37.5665, 126.978));
        let c = parse(json!({"busId": "7", "location": {"latitude": "37.5", "longitude": 127}})).unwrap();
        assert_eq!((c.lat, c.lon), (37.5, 127.0));
    }

    #[test]
    fn names_the_failing_field() {
        assert!(err(json!({"lat": 91, "lon": 0})).starts_with("lat"));
        assert!(err(json!({"lat": 1, "lon": -180.5})).starts_with("lon"));
        assert!(err(json!({"lat": "37.5", "lon": 127})).starts_with("lat"));
        assert!(err(json!({"lat": 0, "lon": 0})).contains("null island"));
        assert!(err(json!({"lat": 1, "lon": 1, "heading": 360})).starts_with("heading"));
        assert!(err(json!({"lat": 1, "lon": 1, "speed": -1})).starts_with("speed"));
        assert!(err(json!({"lat": 1, "lon": 1, "accuracy": "x"})).starts_with("accuracy"));
        assert!(err(json!({"lat": 1, "lon": 1, "ts": 1.5})).starts_with("ts"));
        assert!(err(json!({"lat": 1, "lon": 1, "ts": "1"})).starts_with("ts"));
        assert!(err(json!({"vehicleId": "bus 1", "lat": 1, "lon": 1})).starts_with("vehicleId"));
        assert!(err(json!({"vehicleId": "x".repeat(65), "lat": 1, "lon": 1})).starts_with("vehicleId"));
        assert!(err(json!({"lon": 1})).starts_with("lat"));
        assert!(err(json!([1, 2])).starts_with("payload"));
        assert!(err(json!({"location": {"type": "Point", "coordinates": [200, 1]}})).contains("coordinates[0]"));
    }

    #[test]
    fn optional_fields_may_be_null() {
        let u = parse(json!({"lat": 1, "lon": 2, "heading": null, "speed": 0})).unwrap();
        assert_eq!((u.heading, u.speed), (None, Some(0.0)));
    }

    #[test]
    fn fix_time_window() {
        let w = TimeWindow { max_future_ms: 60_000, max_age_ms: 1_000 };
        let u = parse(json!({"lat": 1, "lon": 2, "ts": 100_000})).unwrap();
        assert_eq!(u.fix_time(100_000, w).unwrap(), 100_000);
        assert!(u.fix_time(101_001, w).is_err());
        assert!(u.fix_time(39_999, w).is_err());
        let none = parse(json!({"lat": 1, "lon": 2})).unwrap();
        assert_eq!(none.fix_time(5, w).unwrap(), 5);
    }

    #[test]
    fn event_omits_absent_fields() {
        let p = Position {
            fleet: "demo".into(),
            vehicle_id: "bus-1".into(),
            lat: 1.0,
            lon: 2.0,
            ts: 3,
            heading: None,
            speed: Some(4.0),
            accuracy: None,
            received_at: 5,
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"fleet":"demo","vehicleId":"bus-1","lat":1.0,"lon":2.0,"ts":3,"speed":4.0,"receivedAt":5}"#
        );
    }
}
