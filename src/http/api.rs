//! The HTTP API of section 7: positions in (one or a batch), the fleet as
//! GeoJSON out, a room message from the server, and session revocation.
//! Every route answers in the contract's envelope; `openapi` documents them.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::PathRejection},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{HttpState, JsonBody, Reply, caller::Caller};
use crate::{
    auth::Role,
    error::{ApiError, Envelope, ErrorCode},
    gateway::{Accepted, rooms},
    geo::BBox,
    ids,
    position::{Position, PositionUpdate},
    store::{ChatMessage, Scope},
};

/// Most items in one batch.
pub const MAX_BATCH: usize = 1000;

/// The `{fleet}/…/{id}` of a fleet's resource (`kind`: geofence, webhook),
/// each checked against the id grammar.
pub(super) fn fleet_and_id(
    kind: &'static str,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    let (fleet, id) = path(p)?;
    check_id("fleet", &fleet)?;
    check_id(kind, &id)?;
    Ok((fleet, id))
}

pub(super) fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t).map_err(|e| ApiError::invalid(format!("path: {}", e.body_text())))
}

pub(super) fn check_id(kind: &'static str, id: &str) -> Result<(), ApiError> {
    if ids::is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("{kind}: must be 1–64 characters of [A-Za-z0-9._:-]")))
    }
}

/// Stores and broadcasts one vehicle's position, exactly like a socket `locationupdate`.
#[utoipa::path(
    put,
    path = "/api/v1/fleets/{fleet}/vehicles/{vehicle}/location",
    params(("fleet" = String, Path), ("vehicle" = String, Path)),
    request_body = PositionUpdate,
    responses(
        (status = 200, description = "`{ ok: true, data: { accepted, reason? } }`", body = Accepted),
        (status = 400, description = "invalid_payload"), (status = 401, description = "unauthenticated, invalid_token, token_expired"),
        (status = 403, description = "forbidden"), (status = 413, description = "payload_too_large"), (status = 503, description = "unavailable"),
    ),
    security(("bearer" = [])), tag = "positions"
)]
pub async fn put_location(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Reply<Accepted>, ApiError> {
    let (fleet, vehicle) = path(p)?;
    check_id("fleet", &fleet)?;
    check_id("vehicle", &vehicle)?;
    caller.require(&fleet, &[Role::Vehicle, Role::Dispatcher])?;
    let Value::Object(mut body) = body else { return Err(ApiError::invalid("payload: must be an object")) };
    for key in ["vehicleId", "busId"] {
        match body.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) if *v == vehicle => {}
            Some(_) => return Err(ApiError::invalid(format!("{key}: differs from the path's vehicle"))),
        }
    }
    body.insert("vehicleId".into(), Value::String(vehicle));
    body.remove("busId");
    let accepted = state.backend.publish(&caller.session(), &Value::Object(body)).await?;
    Ok(Reply(accepted))
}

/// A batch of positions.
#[derive(Deserialize, ToSchema)]
#[serde(from = "Value")]
pub struct BatchBody {
    /// At most 1000 positions, each with `vehicleId`.
    #[schema(value_type = Vec<Value>)]
    items: Value,
}

// Any JSON reads as a batch: the route checks `items` after the caller,
// so a body without an array there is refused naming the field.
impl From<Value> for BatchBody {
    fn from(mut body: Value) -> Self {
        Self { items: body.get_mut("items").map(Value::take).unwrap_or_default() }
    }
}

#[derive(Serialize, ToSchema)]
pub struct BatchResult {
    /// One envelope per item, in order: `{ ok: true, data: { accepted, reason? } }` or `{ ok: false, error }`.
    #[schema(value_type = Vec<Object>)]
    results: Vec<Value>,
}

/// Stores and broadcasts up to 1000 positions, in order, with a result per item.
#[utoipa::path(
    post,
    path = "/api/v1/fleets/{fleet}/locations",
    params(("fleet" = String, Path)),
    request_body = BatchBody,
    responses(
        (status = 200, description = "per-item results", body = BatchResult),
        (status = 400, description = "invalid_payload"), (status = 401, description = "unauthenticated"),
        (status = 403, description = "forbidden"), (status = 413, description = "payload_too_large"),
    ),
    security(("bearer" = [])), tag = "positions"
)]
pub async fn post_locations(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    p: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<BatchBody>,
) -> Result<Reply<BatchResult>, ApiError> {
    let fleet = path(p)?;
    check_id("fleet", &fleet)?;
    caller.require(&fleet, &[Role::Dispatcher])?;
    let Value::Array(items) = &body.items else {
        return Err(ApiError::invalid("items: required array of positions"));
    };
    if items.len() > MAX_BATCH {
        return Err(ApiError::new(ErrorCode::PayloadTooLarge, format!("items: at most {MAX_BATCH}")));
    }
    let session = caller.session();
    let mut results = Vec::with_capacity(items.len());
    // In order: two items of one vehicle must meet the compare-and-set in sequence.
    for item in items {
        let result = state.backend.publish(&session, item).await;
        results.push(serde_json::to_value(Envelope::from_result(&result)).unwrap_or(Value::Null));
    }
    Ok(Reply(BatchResult { results }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FleetQuery {
    /// `minLon,minLat,maxLon,maxLat`
    bbox: Option<String>,
}

fn feature(p: &Position) -> Value {
    let mut props = Map::new();
    props.insert("fleet".into(), p.fleet.clone().into());
    props.insert("vehicleId".into(), p.vehicle_id.clone().into());
    props.insert("ts".into(), p.ts.into());
    for (k, v) in [("heading", p.heading), ("speed", p.speed), ("accuracy", p.accuracy)] {
        if let Some(v) = v {
            props.insert(k.into(), v.into());
        }
    }
    props.insert("receivedAt".into(), p.received_at.into());
    serde_json::json!({
        "type": "Feature",
        "id": p.vehicle_id,
        "geometry": { "type": "Point", "coordinates": [p.lon, p.lat] },
        "properties": props,
    })
}

fn wants_geojson(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("application/geo+json"))
}

/// GeoJSON in the envelope, or bare with `Accept: application/geo+json`.
pub(super) fn geojson(headers: &HeaderMap, value: Value) -> Response {
    if wants_geojson(headers) {
        ([(header::CONTENT_TYPE, "application/geo+json")], Json(value)).into_response()
    } else {
        Reply(value).into_response()
    }
}

/// The fleet's last-known positions as a GeoJSON FeatureCollection.
#[utoipa::path(
    get,
    path = "/api/v1/fleets/{fleet}/vehicles",
    params(("fleet" = String, Path), FleetQuery),
    responses(
        (status = 200, description = "`{ ok: true, data: FeatureCollection }`, or the bare FeatureCollection with `Accept: application/geo+json`"),
        (status = 400, description = "invalid_payload"), (status = 401, description = "unauthenticated"), (status = 403, description = "forbidden"),
    ),
    security(("bearer" = [])), tag = "positions"
)]
pub async fn get_vehicles(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<FleetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let fleet = path(p)?;
    check_id("fleet", &fleet)?;
    caller.require(&fleet, &[Role::Vehicle, Role::Viewer, Role::Dispatcher])?;
    let Query(q) = q.map_err(|e| ApiError::invalid(format!("query: {}", e.body_text())))?;
    let bbox = match q.bbox {
        None => None,
        Some(b) => {
            let parts: Result<Vec<f64>, _> = b.split(',').map(|x| x.trim().parse::<f64>()).collect();
            let parts = parts.map_err(|_| ApiError::invalid("bbox: must be minLon,minLat,maxLon,maxLat"))?;
            Some(BBox::from_json(&serde_json::json!(parts), "bbox")?)
        }
    };
    // A scoped viewer's listing holds its own vehicles only (read as
    // such, not filtered out of the fleet), whatever the box.
    let encoded = match &caller.0.vehicles {
        None => state.backend.store().positions(&fleet, Scope::Fleet).await,
        Some(scope) => {
            let ids: Vec<String> = scope.iter().map(str::to_owned).collect();
            state.backend.store().positions(&fleet, Scope::Vehicles(&ids)).await
        }
    }?;
    let features: Vec<Value> = encoded
        .iter()
        .filter_map(|e| serde_json::from_str::<Position>(e).ok())
        .filter(|p| caller.may_watch(&p.vehicle_id))
        .filter(|p| bbox.is_none_or(|b| b.contains(p.lon, p.lat)))
        .map(|p| feature(&p))
        .collect();
    Ok(geojson(&headers, serde_json::json!({ "type": "FeatureCollection", "features": features })))
}

/// One vehicle's last-known position as a GeoJSON Feature.
#[utoipa::path(
    get,
    path = "/api/v1/fleets/{fleet}/vehicles/{vehicle}",
    params(("fleet" = String, Path), ("vehicle" = String, Path)),
    responses(
        (status = 200, description = "`{ ok: true, data: Feature }`"),
        (status = 401, description = "unauthenticated"), (status = 403, description = "forbidden"), (status = 404, description = "not_found"),
    ),
    security(("bearer" = [])), tag = "positions"
)]
pub async fn get_vehicle(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (fleet, vehicle) = path(p)?;
    check_id("fleet", &fleet)?;
    check_id("vehicle", &vehicle)?;
    caller.require(&fleet, &[Role::Vehicle, Role::Viewer, Role::Dispatcher])?;
    // Forbidden whether or not it has a position, so a scoped token
    // cannot learn which other vehicles exist.
    if !caller.may_watch(&vehicle) {
        return Err(ApiError::forbidden("vehicle: outside this token's vehicles"));
    }
    let ids = [vehicle];
    let encoded = state.backend.store().positions(&fleet, Scope::Vehicles(&ids)).await?;
    let position = encoded
        .first()
        .and_then(|e| serde_json::from_str::<Position>(e).ok())
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no known position for this vehicle"))?;
    Ok(geojson(&headers, feature(&position)))
}

#[derive(Deserialize, ToSchema)]
#[serde(from = "Value")]
pub struct MessageBody {
    /// 1–2000 characters.
    text: Value,
}

// Any JSON reads as a message: the route checks `text` after the caller.
impl From<Value> for MessageBody {
    fn from(mut body: Value) -> Self {
        Self { text: body.get_mut("text").map(Value::take).unwrap_or_default() }
    }
}

/// Sends a chat message from the server to a room (stored in its history).
#[utoipa::path(
    post,
    path = "/api/v1/fleets/{fleet}/rooms/{room}/messages",
    params(("fleet" = String, Path), ("room" = String, Path)),
    request_body = MessageBody,
    responses(
        (status = 200, description = "the stored message", body = ChatMessage),
        (status = 400, description = "invalid_payload"), (status = 401, description = "unauthenticated"), (status = 403, description = "forbidden"),
        (status = 413, description = "payload_too_large"), (status = 503, description = "unavailable"),
    ),
    security(("bearer" = [])), tag = "rooms"
)]
pub async fn post_message(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(body): JsonBody<MessageBody>,
) -> Result<Reply<ChatMessage>, ApiError> {
    let (fleet, room) = path(p)?;
    check_id("fleet", &fleet)?;
    let room = rooms::room_name(Some(&Value::String(room)))?;
    caller.require(&fleet, &[Role::Dispatcher])?;
    let text = rooms::message_text(Some(&body.text))?;
    let message = state.backend.post_message(&fleet, room, text).await?;
    Ok(Reply(message))
}

#[derive(Serialize, ToSchema)]
pub struct Revoked {
    revoked: bool,
}

/// Revokes a session: its sockets are disconnected on every replica.
#[utoipa::path(
    delete,
    path = "/api/v1/sessions/{sessionId}",
    params(("sessionId" = String, Path)),
    responses(
        (status = 200, description = "revoked", body = Revoked),
        (status = 401, description = "unauthenticated"), (status = 403, description = "forbidden"), (status = 404, description = "not_found"),
    ),
    security(("bearer" = [])), tag = "sessions"
)]
pub async fn delete_session(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    p: Result<Path<String>, PathRejection>,
) -> Result<Reply<Revoked>, ApiError> {
    let id = path(p)?;
    let not_found = || ApiError::new(ErrorCode::NotFound, "unknown or expired session");
    if !ids::is_plausible_session_id(&id) {
        return Err(not_found());
    }
    let session = state.backend.store().session(&id).await?.ok_or_else(not_found)?;
    let c = &caller.0;
    let owner = c.fleet == session.fleet && c.sub == session.sub;
    let dispatcher = c.fleet == session.fleet && c.role == Role::Dispatcher;
    if !owner && !dispatcher {
        return Err(ApiError::forbidden("only the session's owner or a dispatcher of its fleet may revoke it"));
    }
    state.backend.revoke(&id).await?;
    Ok(Reply(Revoked { revoked: true }))
}
