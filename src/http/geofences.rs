//! The geofence routes of section 11: create or replace, list, read one
//! (with who is inside now), delete. Dispatchers write; any role of the
//! fleet reads; a scoped viewer's `inside` lists only its own vehicles.

use std::sync::Arc;

use axum::{
    extract::{Path, State, rejection::PathRejection},
    http::HeaderMap,
    response::Response,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        ObjectBuilder, RefOr, Schema,
        schema::{SchemaType, Type},
    },
};

use super::{
    Deleted, HttpState, JsonBody, Reply,
    api::{check_id, fleet_and_id, geojson, path},
    caller::Caller,
};
use crate::{auth::Role, error::ApiError};

const READERS: &[Role] = &[Role::Vehicle, Role::Viewer, Role::Dispatcher];

/// A geofence as the routes take and give it: a GeoJSON Feature, kept as
/// JSON since `geofence::shape` reads it member by member, so a fault
/// names its member.
#[derive(Deserialize, Serialize)]
#[serde(transparent)]
pub struct Feature(Value);

// Written out rather than derived, the members being read by hand.
impl PartialSchema for Feature {
    fn schema() -> RefOr<Schema> {
        let object = || ObjectBuilder::new().schema_type(Type::Object);
        ObjectBuilder::new()
            .description(Some(
                "A geofence: a GeoJSON Feature (RFC 7946) whose geometry is a `Polygon` or `MultiPolygon` (holes \
                 allowed), or a `Point` with `properties.radius` in metres.",
            ))
            .property("type", ObjectBuilder::new().schema_type(Type::String).examples([json!("Feature")]))
            .property(
                "id",
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .examples([json!("depot")]),
            )
            .property("geometry", object())
            .property("properties", object())
            .required("type")
            .required("geometry")
            .required("properties")
            .into()
    }
}

impl ToSchema for Feature {}

/// Creates or replaces a geofence.
#[utoipa::path(
    put,
    path = "/api/v1/fleets/{fleet}/geofences/{id}",
    params(("fleet" = String, Path), ("id" = String, Path)),
    request_body = Feature,
    responses(
        (status = 200, description = "`{ ok: true, data: Feature }`: the geofence as stored", body = Feature),
        (status = 400, description = "invalid_payload (the message names the field)"), (status = 401, description = "unauthenticated"),
        (status = 403, description = "forbidden"), (status = 413, description = "payload_too_large: over FLEETGATE_GEOFENCES_MAX"),
        (status = 503, description = "unavailable"),
    ),
    security(("bearer" = [])), tag = "geofences"
)]
pub async fn put_geofence(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(Feature(body)): JsonBody<Feature>,
) -> Result<Reply<Feature>, ApiError> {
    let (fleet, id) = fleet_and_id("geofence", p)?;
    caller.require(&fleet, &[Role::Dispatcher])?;
    let geofences = state.backend.geofences();
    geofences.put(&fleet, &id, &body).await?;
    let (feature, _) = geofences.get(&fleet, &id).await?;
    Ok(Reply(Feature(feature)))
}

/// The fleet's geofences as a GeoJSON FeatureCollection.
#[utoipa::path(
    get,
    path = "/api/v1/fleets/{fleet}/geofences",
    params(("fleet" = String, Path)),
    responses(
        (status = 200, description = "`{ ok: true, data: FeatureCollection }`, or bare with `Accept: application/geo+json`"),
        (status = 400, description = "invalid_payload"), (status = 401, description = "unauthenticated"), (status = 403, description = "forbidden"), (status = 503, description = "unavailable"),
    ),
    security(("bearer" = [])), tag = "geofences"
)]
pub async fn list_geofences(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let fleet = path(p)?;
    check_id("fleet", &fleet)?;
    caller.require(&fleet, READERS)?;
    let features = state.backend.geofences().list(&fleet).await?;
    Ok(geojson(&headers, serde_json::json!({ "type": "FeatureCollection", "features": features })))
}

/// One geofence, with `properties.inside`: the vehicles inside it now.
#[utoipa::path(
    get,
    path = "/api/v1/fleets/{fleet}/geofences/{id}",
    params(("fleet" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, description = "`{ ok: true, data: Feature }` with `properties.inside`", body = Feature),
        (status = 400, description = "invalid_payload"), (status = 401, description = "unauthenticated"), (status = 403, description = "forbidden"), (status = 404, description = "not_found"),
        (status = 503, description = "unavailable"),
    ),
    security(("bearer" = [])), tag = "geofences"
)]
pub async fn get_geofence(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (fleet, id) = fleet_and_id("geofence", p)?;
    caller.require(&fleet, READERS)?;
    let (mut feature, inside) = state.backend.geofences().get(&fleet, &id).await?;
    let inside: Vec<Value> = inside.into_iter().filter(|v| caller.may_watch(v)).map(Value::String).collect();
    if let Some(props) = feature.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("inside".into(), Value::Array(inside));
    }
    Ok(geojson(&headers, feature))
}

/// Deletes a geofence; vehicles inside get no `exit`.
#[utoipa::path(
    delete,
    path = "/api/v1/fleets/{fleet}/geofences/{id}",
    params(("fleet" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, description = "deleted", body = Deleted),
        (status = 400, description = "invalid_payload"), (status = 401, description = "unauthenticated"), (status = 403, description = "forbidden"), (status = 404, description = "not_found"),
        (status = 503, description = "unavailable"),
    ),
    security(("bearer" = [])), tag = "geofences"
)]
pub async fn delete_geofence(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Reply<Deleted>, ApiError> {
    let (fleet, id) = fleet_and_id("geofence", p)?;
    caller.require(&fleet, &[Role::Dispatcher])?;
    state.backend.geofences().delete(&fleet, &id).await?;
    Ok(Reply(Deleted::YES))
}
