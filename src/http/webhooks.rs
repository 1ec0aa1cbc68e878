//! The webhook routes of section 12: register (create or replace), list,
//! delete. Dispatchers only; no answer ever carries a secret.

use std::sync::Arc;

use axum::extract::{Path, State, rejection::PathRejection};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{
    Deleted, HttpState, JsonBody, Reply,
    api::{check_id, fleet_and_id, path},
    caller::Caller,
};
use crate::{
    auth::Role,
    error::ApiError,
    outputs::registration::{Registration, WebhookView},
};

#[derive(Serialize, ToSchema)]
pub struct Registered {
    #[serde(flatten)]
    webhook: WebhookView,
    /// Whether the id was new (else the registration was replaced).
    created: bool,
}

/// Registers a webhook (or replaces one, which keeps its place in the
/// stream). A new webhook gets every event from its registration on.
#[utoipa::path(
    put,
    path = "/api/v1/fleets/{fleet}/webhooks/{id}",
    params(("fleet" = String, Path), ("id" = String, Path)),
    request_body = Registration,
    responses(
        (status = 200, description = "`{ ok: true, data: { id, url, types?, created } }` (no secret)", body = Registered),
        (status = 400, description = "invalid_payload (the message names the field)"), (status = 401, description = "unauthenticated"),
        (status = 403, description = "forbidden"), (status = 413, description = "payload_too_large: over 32 webhooks per fleet"),
        (status = 503, description = "unavailable"),
    ),
    security(("bearer" = [])), tag = "webhooks"
)]
pub async fn put_webhook(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Reply<Registered>, ApiError> {
    let (fleet, id) = fleet_and_id("webhook", p)?;
    caller.require(&fleet, &[Role::Dispatcher])?;
    let (webhook, created) = state.webhooks.put(&fleet, &id, &body).await?;
    Ok(Reply(Registered { webhook, created }))
}

/// The fleet's webhooks, by id, without their secrets.
#[utoipa::path(
    get,
    path = "/api/v1/fleets/{fleet}/webhooks",
    params(("fleet" = String, Path)),
    responses(
        (status = 200, description = "`{ ok: true, data: [ { id, url, types? } ] }`", body = [WebhookView]),
        (status = 400, description = "invalid_payload"), (status = 401, description = "unauthenticated"),
        (status = 403, description = "forbidden"), (status = 503, description = "unavailable"),
    ),
    security(("bearer" = [])), tag = "webhooks"
)]
pub async fn list_webhooks(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    p: Result<Path<String>, PathRejection>,
) -> Result<Reply<Vec<WebhookView>>, ApiError> {
    let fleet = path(p)?;
    check_id("fleet", &fleet)?;
    caller.require(&fleet, &[Role::Dispatcher])?;
    Ok(Reply(state.webhooks.list(&fleet).await?))
}

/// Deletes a webhook: nothing more is sent to it.
#[utoipa::path(
    delete,
    path = "/api/v1/fleets/{fleet}/webhooks/{id}",
    params(("fleet" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, description = "deleted", body = Deleted),
        (status = 400, description = "invalid_payload"), (status = 401, description = "unauthenticated"), (status = 403, description = "forbidden"),
        (status = 404, description = "not_found"), (status = 503, description = "unavailable"),
    ),
    security(("bearer" = [])), tag = "webhooks"
)]
pub async fn delete_webhook(
    State(state): State<Arc<HttpState>>,
    caller: Caller,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Reply<Deleted>, ApiError> {
    let (fleet, id) = fleet_and_id("webhook", p)?;
    caller.require(&fleet, &[Role::Dispatcher])?;
    state.webhooks.delete(&fleet, &id).await?;
    Ok(Reply(Deleted::YES))
}
