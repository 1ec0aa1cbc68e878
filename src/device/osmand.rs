//! The OsmAnd listener (contract section 13): what the Traccar Client apps
//! and OsmAnd's live tracking send, `GET`/`POST /` with query or form
//! parameters, or the JSON body of Traccar Client 9 and later. Each
//! request is read into a section 5.1 object and handed to the accept
//! path; the device identifier is the vehicle's token.
//!
//! The identifier is a credential: no log line, span or metric here
//! carries the request's query, body or `id`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, RawQuery, Request, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
    routing::any,
    serve::Listener as _,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Ingest, count_unreadable, device_session, timestamp};
use crate::{
    error::{ApiError, ErrorCode},
    gateway::{Accepted, Source},
    http::Reply,
    metrics::{ListenerKind, names},
};

/// One knot in m/s (1852 m per hour).
pub const KNOT_MPS: f64 = 1852.0 / 3600.0;

/// Most positions in one JSON body (the app's batch upload).
const MAX_BATCH: usize = 1000;

const SOURCE: Source = Source::Osmand;

struct OsmandState {
    ingest: Arc<dyn Ingest>,
    /// How long a request's body may take to arrive after its head.
    body_timeout: Duration,
}

/// Serves the listener until `stop` is cancelled, then lets the requests in
/// progress finish.
///
/// HTTP/1 only, with hyper's header read timeout, which axum's `serve`
/// leaves off (it sets no timer): a connection must deliver a request head
/// within `idle_timeout` of opening or of its previous answer, so neither
/// an idle kept-alive connection nor a peer that sends nothing (or drips
/// its head) holds a place under the listener's cap for longer. A phone
/// whose connection was closed between reports opens a new one, as HTTP
/// clients do. (HTTP/2 over cleartext is not offered: the apps do not
/// speak it, and its connections have no such bound.)
pub async fn serve(
    mut listener: crate::net::Listener,
    ingest: Arc<dyn Ingest>,
    max_body: usize,
    idle_timeout: Duration,
    stop: CancellationToken,
) {
    let app = router(ingest, max_body, idle_timeout);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(idle_timeout);
    // Each connection holds a receiver; the sender sees them all gone.
    let (connections, open) = watch::channel(());
    loop {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app.clone()));
        let (stop, open) = (stop.clone(), open.clone());
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            match ended {
                Err(e) if e.is_timeout() => count_idle_timeout(),
                Err(e) => tracing::trace!(error = %e, "osmand connection ended"),
                Ok(()) => {}
            }
            drop(open);
        });
    }
    drop((listener, open));
    connections.closed().await;
}

pub fn router(ingest: Arc<dyn Ingest>, max_body: usize, body_timeout: Duration) -> Router {
    Router::new()
        .route("/", any(receive))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "positions go to /") })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(Arc::new(OsmandState { ingest, body_timeout }))
}

fn count_idle_timeout() {
    metrics::counter!(names::LISTENER_IDLE_TIMEOUTS, "listener" => ListenerKind::Osmand).increment(1);
}

/// A device's request, whichever form it took.
struct Report {
    /// The `id` / `device_id`: the vehicle token.
    token: Option<String>,
    /// Section 5.1 objects, in the order the device recorded them; read
    /// apart from the token, so a request without a valid one learns
    /// nothing about its values.
    positions: Result<Vec<Value>, ApiError>,
}

async fn receive(
    State(state): State<Arc<OsmandState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request: Request,
) -> Response {
    // The header timeout ends with the head: a body dripped a byte at a
    // time would otherwise hold the connection for as long as it lasts.
    let body = match tokio::time::timeout(state.body_timeout, Bytes::from_request(request, &())).await {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) => return rejection.into_response(),
        Err(_) => {
            count_idle_timeout();
            let e = ApiError::invalid(format!("body: not received within {} s", state.body_timeout.as_secs()));
            return ([(header::CONNECTION, HeaderValue::from_static("close"))], e).into_response();
        }
    };
    match handle(&state, query.as_deref().unwrap_or(""), &headers, &body).await {
        Ok(accepted) => Reply(accepted).into_response(),
        Err(e) => {
            tracing::debug!(code = e.code.as_str(), message = %e.message, "osmand position refused");
            e.into_response()
        }
    }
}

async fn handle(state: &OsmandState, query: &str, headers: &HeaderMap, body: &[u8]) -> Result<Accepted, ApiError> {
    let unreadable = |e: ApiError| {
        if e.code == ErrorCode::InvalidPayload {
            count_unreadable(SOURCE);
        }
        e
    };
    let report = read_report(query, headers, body).map_err(unreadable)?;
    let Some(token) = report.token.filter(|t| !t.is_empty()) else {
        super::count_auth_failure(SOURCE);
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "id: required (the device identifier is the vehicle token)",
        ));
    };
    let session = device_session(state.ingest.authenticator(), &token, SOURCE).await?;
    let positions = report.positions.map_err(unreadable)?;
    let mut last = Accepted { accepted: false, reason: Some("stale") };
    // In order: the compare-and-set keeps the newest of a batch either way,
    // and the first refusal answers for the request (the app sends it again).
    for position in &positions {
        last = state.ingest.publish(&session, position, SOURCE).await?;
    }
    Ok(last)
}

fn is_json(headers: &HeaderMap, body: &[u8]) -> bool {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
    declared || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn read_report(query: &str, headers: &HeaderMap, body: &[u8]) -> Result<Report, ApiError> {
    if is_json(headers, body) {
        return read_json(body);
    }
    // Query parameters, then a form body's (the older Android app posts
    // its parameters in the query with an empty body; a form wins a tie).
    let mut params: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()).chain(form_urlencoded::parse(body)) {
        params.insert(k.into_owned(), v.into_owned());
    }
    let token = params.get("id").or_else(|| params.get("deviceid")).cloned();
    Ok(Report { token, positions: from_params(&params).map(|p| vec![Value::Object(p)]) })
}

/// A parameter that is present and not empty.
fn param<'a>(params: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    params.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn number(text: &str, field: &str) -> Result<f64, ApiError> {
    text.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .ok_or_else(|| ApiError::invalid(format!("{field}: must be a finite number")))
}

fn optional(params: &HashMap<String, String>, field: &str) -> Result<Option<f64>, ApiError> {
    param(params, field).map(|t| number(t, field)).transpose()
}

/// What the apps send for "unknown" (a negative speed, heading or accuracy) counts as absent.
fn known(value: Option<f64>) -> Option<f64> {
    value.filter(|v| *v >= 0.0)
}

/// The range checks of 5.1, made here too so a refusal names the field the
/// device sent (`bearing`, `location.coords.longitude`), not the 5.1 one.
fn in_range(value: Option<f64>, range: std::ops::Range<f64>, field: &str) -> Result<Option<f64>, ApiError> {
    match value {
        Some(v) if !range.contains(&v) => {
            Err(ApiError::invalid(format!("{field}: must be in [{}, {})", range.start, range.end)))
        }
        _ => Ok(value),
    }
}

fn insert(obj: &mut Map<String, Value>, key: &str, value: Option<f64>) {
    if let Some(n) = value.and_then(serde_json::Number::from_f64) {
        obj.insert(key.into(), Value::Number(n));
    }
}

/// The query/form parameters as a section 5.1 object.
fn from_params(params: &HashMap<String, String>) -> Result<Map<String, Value>, ApiError> {
    let (lat, lon) = match (param(params, "lat"), param(params, "lon"), param(params, "location")) {
        (Some(lat), Some(lon), _) => (number(lat, "lat")?, number(lon, "lon")?),
        (None, None, Some(location)) => {
            let (lat, lon) = location.split_once(',').ok_or_else(|| ApiError::invalid("location: must be lat,lon"))?;
            (number(lat.trim(), "location")?, number(lon.trim(), "location")?)
        }
        (None, _, _) => return Err(ApiError::invalid("lat: required")),
        (_, None, _) => return Err(ApiError::invalid("lon: required")),
    };
    let mut obj = Map::new();
    insert(&mut obj, "lat", Some(lat));
    insert(&mut obj, "lon", Some(lon));
    if let Some(text) = param(params, "timestamp") {
        let ms = timestamp::parse_ms(text)
            .ok_or_else(|| ApiError::invalid("timestamp: must be seconds or milliseconds since epoch, or ISO 8601"))?;
        obj.insert("ts".into(), ms.into());
    }
    // Knots on this form (OsmAnd's unit), m/s in the contract.
    insert(&mut obj, "speed", known(optional(params, "speed")?).map(|knots| knots * KNOT_MPS));
    let bearing = match param(params, "bearing") {
        Some(_) => in_range(known(optional(params, "bearing")?), 0.0..360.0, "bearing")?,
        None => in_range(known(optional(params, "heading")?), 0.0..360.0, "heading")?,
    };
    insert(&mut obj, "heading", bearing);
    insert(&mut obj, "accuracy", known(optional(params, "accuracy")?));
    // Read so a garbled value is reported, but not kept: positions (5.2)
    // carry no altitude or battery level.
    optional(params, "altitude")?;
    optional(params, "batt")?;
    Ok(obj)
}

/// The JSON body of Traccar Client 9+ (its location SDK's native form):
/// one `location` object, or an array of them from a batch upload.
fn read_json(body: &[u8]) -> Result<Report, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| ApiError::invalid("body: not valid JSON"))?;
    let obj = value.as_object().ok_or_else(|| ApiError::invalid("body: must be a JSON object"))?;
    let token = match obj.get("device_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid("device_id: must be a string (the vehicle token)")),
    };
    Ok(Report { token, positions: locations(obj.get("location")) })
}

/// The `location` member: one object, or an array of them (a batch upload).
fn locations(location: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    match location {
        Some(Value::Object(location)) => Ok(vec![Value::Object(from_location(location, "location")?)]),
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.len() > MAX_BATCH {
                return Err(ApiError::new(ErrorCode::PayloadTooLarge, format!("location: at most {MAX_BATCH}")));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let field = format!("location[{i}]");
                let location =
                    item.as_object().ok_or_else(|| ApiError::invalid(format!("{field}: must be an object")))?;
                out.push(Value::Object(from_location(location, &field)?));
            }
            Ok(out)
        }
        _ => Err(ApiError::invalid("location: required object")),
    }
}

fn json_number(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<f64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(ApiError::invalid(format!("{field}.{key}: must be a number"))),
    }
}

fn from_location(location: &Map<String, Value>, field: &str) -> Result<Map<String, Value>, ApiError> {
    let coords = location
        .get("coords")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::invalid(format!("{field}.coords: required object")))?;
    let coords_field = format!("{field}.coords");
    let lat = json_number(coords, "latitude", &coords_field)?
        .ok_or_else(|| ApiError::invalid(format!("{coords_field}.latitude: required")))?;
    let lon = json_number(coords, "longitude", &coords_field)?
        .ok_or_else(|| ApiError::invalid(format!("{coords_field}.longitude: required")))?;
    if !(-90.0..=90.0).contains(&lat) {
        return Err(ApiError::invalid(format!("{coords_field}.latitude: must be in [-90, 90]")));
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(ApiError::invalid(format!("{coords_field}.longitude: must be in [-180, 180]")));
    }
    let mut obj = Map::new();
    insert(&mut obj, "lat", Some(lat));
    insert(&mut obj, "lon", Some(lon));
    match location.get("timestamp") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            let ms = timestamp::parse_ms(text)
                .ok_or_else(|| ApiError::invalid(format!("{field}.timestamp: must be ISO 8601")))?;
            obj.insert("ts".into(), ms.into());
        }
        Some(_) => return Err(ApiError::invalid(format!("{field}.timestamp: must be an ISO 8601 string"))),
    }
    // Already m/s on this form.
    insert(&mut obj, "speed", known(json_number(coords, "speed", &coords_field)?));
    let heading = known(json_number(coords, "heading", &coords_field)?);
    insert(&mut obj, "heading", in_range(heading, 0.0..360.0, &format!("{coords_field}.heading"))?);
    insert(&mut obj, "accuracy", known(json_number(coords, "accuracy", &coords_field)?));
    json_number(coords, "altitude", &coords_field)?;
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> HashMap<String, String> {
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    #[test]
    fn knots_become_metres_per_second_and_unknowns_are_dropped() {
        let obj =
            from_params(&params("id=x&lat=1.5&lon=2.5&speed=10&bearing=-1&accuracy=-1&altitude=3&batt=80")).unwrap();
        assert!((obj["speed"].as_f64().unwrap() - 5.144_444).abs() < 1e-5);
        assert!(!obj.contains_key("heading") && !obj.contains_key("accuracy"));
        assert_eq!(obj["lat"], 1.5);
    }

    #[test]
    fn garbled_fields_are_named() {
        for (q, field) in [
            ("lat=x&lon=1", "lat"),
            ("lat=1", "lon"),
            ("lat=NaN&lon=1", "lat"),
            ("lat=1&lon=1&timestamp=soon", "timestamp"),
            ("lat=1&lon=1&speed=fast", "speed"),
            ("lat=1&lon=1&batt=full", "batt"),
        ] {
            let e = from_params(&params(q)).unwrap_err();
            assert!(e.message.starts_with(field), "{q}: {}", e.message);
        }
    }

    #[test]
    fn the_json_form_keeps_metres_per_second() {
        let body = br#"{"location":{"timestamp":"2024-11-21T14:40:00.000Z","coords":{"latitude":1.5,"longitude":2.5,"speed":3,"heading":-1,"accuracy":4}},"device_id":"t"}"#;
        let report = read_json(body).unwrap();
        assert_eq!(report.token.as_deref(), Some("t"));
        let p = &report.positions.unwrap()[0];
        assert_eq!(p["speed"], 3.0);
        assert_eq!(p["ts"], 1_732_200_000_000i64);
        assert!(p.get("heading").is_none());
    }
}
