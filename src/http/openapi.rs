//! The OpenAPI document of the HTTP API, generated from the route
//! annotations and the types the routes take and answer, and served at
//! `/api/v1/openapi.json`.

use axum::Json;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{api, geofences, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(title = "fleetgate HTTP API", description = "Positions in, the fleet out, room messages, session revocation, geofences and webhooks. Every reply is `{ ok: true, data }` or `{ ok: false, error: { code, message } }`."),
    paths(
        api::put_location, api::post_locations, api::get_vehicles, api::get_vehicle, api::post_message, api::delete_session,
        geofences::put_geofence, geofences::list_geofences, geofences::get_geofence, geofences::delete_geofence,
        webhooks::put_webhook, webhooks::list_webhooks, webhooks::delete_webhook,
    ),
    modifiers(&Bearer),
    tags((name = "positions"), (name = "rooms"), (name = "sessions"), (name = "geofences"), (name = "webhooks"))
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
