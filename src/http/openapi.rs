//! The OpenAPI document of the HTTP API, generated from the route
//! annotations and the types the routes take and answer, and served at
//! `/api/v1/openapi.json`.

use axum::Json;
use utoipa::{
    Modify, OpenApi, PartialSchema, ToSchema,
    openapi::{
        KnownFormat, ObjectBuilder, RefOr, Schema, SchemaFormat,
        schema::Type,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use super::{api, geofences, webhooks};
use crate::store::ChatMessage;

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

// The store's types carry no documentation attributes: the schema of the
// one the API answers with is written here, and the test below keeps it
// to the type's serialized fields.
impl PartialSchema for ChatMessage {
    fn schema() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        ObjectBuilder::new()
            .property("id", string())
            .property("room", string())
            .property("from", string())
            .property("text", string())
            .property(
                "ts",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64))),
            )
            .required("id")
            .required("room")
            .required("from")
            .required("text")
            .required("ts")
            .into()
    }
}

impl ToSchema for ChatMessage {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::openapi::RefOr;

    use super::*;

    #[test]
    fn the_chat_message_schema_lists_the_fields_it_serializes() {
        let message =
            ChatMessage { id: "1-1".into(), room: "ops".into(), from: "server".into(), text: "hi".into(), ts: 1 };
        let serde_json::Value::Object(fields) = serde_json::to_value(&message).unwrap() else {
            panic!("not an object")
        };
        let serialized: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
        let RefOr::T(Schema::Object(schema)) = ChatMessage::schema() else { panic!("not an object schema") };
        let documented: BTreeSet<&str> = schema.properties.keys().map(String::as_str).collect();
        let required: BTreeSet<&str> = schema.required.iter().map(String::as_str).collect();
        assert_eq!(documented, serialized);
        assert_eq!(required, serialized);
    }
}
