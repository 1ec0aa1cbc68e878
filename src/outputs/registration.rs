//! Webhook registrations (contract section 12): the body of `PUT
//! /api/v1/fleets/{fleet}/webhooks/{id}` read and checked field by field,
//! the record the store keeps, and the view `GET` answers with (never the
//! secret). [`Webhooks`] is what the HTTP routes call.

use std::{collections::BTreeSet, sync::Arc};

use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use super::guard::Guard;
use crate::store::{Store, StoreError, events::EventKind, webhooks::WebhookWrite};

/// Most webhooks per fleet.
pub const MAX_PER_FLEET: usize = 32;
/// Longest webhook URL.
pub const MAX_URL_LEN: usize = 2048;
/// Shortest and longest secret: long enough that its HMAC cannot be
/// guessed, short enough to be a header's worth.
pub const SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=256;

/// Why a webhook call failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("at most {0} webhooks per fleet")]
    Full(usize),
    #[error("no such webhook")]
    NotFound,
    /// `FLEETGATE_EVENTS_MAX=0`: there is no stream to deliver from.
    #[error("webhooks need the event stream (FLEETGATE_EVENTS_MAX is 0)")]
    Disabled,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One webhook as stored: what it was registered with. Its schema is the
/// body of a `PUT` ([`Registration::from_body`] reads it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(description = "A webhook registration.")]
pub struct Registration {
    /// `http://` or `https://`; must not resolve to a loopback, link-local
    /// or private address unless `FLEETGATE_WEBHOOK_ALLOW_PRIVATE=true`.
    #[schema(example = "https://crm.example.com/hooks/fleetgate")]
    pub url: String,
    /// Event types to deliver (`position`, `vehicle_online`,
    /// `vehicle_offline`, `geofence`, `chat`); absent: every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// 16 to 256 characters; signs every POST (`X-Fleetgate-Signature`).
    pub secret: String,
}

/// A registration as `GET` shows it: without the secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    #[schema(example = "dispatch-crm")]
    pub id: String,
    #[schema(example = "https://crm.example.com/hooks/fleetgate")]
    pub url: String,
    /// The event types it gets; absent: every type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
}

impl Registration {
    /// The body of a `PUT`, checked: `url` an absolute `http(s)://` URL
    /// without credentials, `types` (optional) a non-empty list of event
    /// types, `secret` a string of 16 to 256 characters; nothing else.
    pub fn from_body(body: &Value) -> Result<Self, WebhookError> {
        let invalid = |m: &str| WebhookError::Invalid(m.to_owned());
        let Value::Object(fields) = body else { return Err(invalid("payload: must be an object")) };
        if let Some(other) = fields.keys().find(|k| !matches!(k.as_str(), "url" | "types" | "secret")) {
            return Err(WebhookError::Invalid(format!("{other}: unknown field (url, types, secret)")));
        }
        let url = match fields.get("url") {
            Some(Value::String(url)) => check_url(url)?,
            Some(_) => return Err(invalid("url: must be a string")),
            None => return Err(invalid("url: required")),
        };
        let secret = match fields.get("secret") {
            Some(Value::String(s)) if SECRET_LEN.contains(&s.chars().count()) => s.clone(),
            Some(Value::String(_)) => return Err(invalid("secret: must be 16 to 256 characters")),
            Some(_) => return Err(invalid("secret: must be a string")),
            None => return Err(invalid("secret: required")),
        };
        let types = match fields.get("types") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(invalid("types: must list at least one type (omit it for every type)"));
            }
            Some(Value::Array(items)) => {
                let mut kinds = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let kind = item.as_str().and_then(EventKind::parse).ok_or_else(|| {
                        let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                        WebhookError::Invalid(format!("types[{i}]: must be one of {}", all.join(", ")))
                    })?;
                    kinds.insert(kind.as_str().to_owned());
                }
                Some(kinds.into_iter().collect())
            }
            Some(_) => return Err(invalid("types: must be an array of event types")),
        };
        Ok(Self { url: url.to_string(), types, secret })
    }

    /// The stored record, as the store keeps it.
    pub fn record(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_record(record: &str) -> Option<Self> {
        serde_json::from_str(record).ok()
    }

    /// Whether it gets events of `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.types.as_ref().is_none_or(|t| t.iter().any(|k| k == kind.as_str()))
    }

    pub fn view(&self, id: &str) -> WebhookView {
        WebhookView { id: id.to_owned(), url: self.url.clone(), types: self.types.clone() }
    }
}

fn check_url(raw: &str) -> Result<Url, WebhookError> {
    let invalid = |m: &str| WebhookError::Invalid(format!("url: {m}"));
    if raw.len() > MAX_URL_LEN {
        return Err(invalid(&format!("at most {MAX_URL_LEN} bytes")));
    }
    let url = Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must be http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials in the URL are not supported (requests are signed with the secret)"));
    }
    if url.fragment().is_some() {
        return Err(invalid("must not have a fragment"));
    }
    Ok(url)
}

/// The registration side of the webhooks: what the HTTP routes call.
pub struct Webhooks {
    store: Arc<dyn Store>,
    guard: Guard,
    /// Wakes this replica's supervisor, so a change is acted on at once
    /// here (other replicas see it at their next discovery round).
    nudge: Arc<Notify>,
}

impl Webhooks {
    pub fn new(store: Arc<dyn Store>, guard: Guard, nudge: Arc<Notify>) -> Self {
        Self { store, guard, nudge }
    }

    /// Creates or replaces a webhook; whether it is new. A new one gets
    /// every event from now on; a replaced one goes on where it was.
    pub async fn put(&self, fleet: &str, id: &str, body: &Value) -> Result<(WebhookView, bool), WebhookError> {
        let registration = Registration::from_body(body)?;
        if !self.store.events().enabled() {
            return Err(WebhookError::Disabled);
        }
        let url = Url::parse(&registration.url).map_err(|e| WebhookError::Invalid(format!("url: {e}")))?;
        self.guard.check_url(&url).await.map_err(|e| WebhookError::Invalid(format!("url: {e}")))?;
        let written = self.store.webhooks().put_webhook(fleet, id, &registration.record(), MAX_PER_FLEET).await?;
        let created = match written {
            WebhookWrite::Stored { created } => created,
            WebhookWrite::Full => return Err(WebhookError::Full(MAX_PER_FLEET)),
        };
        self.nudge.notify_one();
        tracing::info!(fleet, webhook = id, url = %url_for_log(&url), created, "webhook registered");
        Ok((registration.view(id), created))
    }

    /// The fleet's webhooks, by id.
    pub async fn list(&self, fleet: &str) -> Result<Vec<WebhookView>, WebhookError> {
        let mut all: Vec<WebhookView> = self
            .store
            .webhooks()
            .webhooks(fleet)
            .await?
            .into_iter()
            .filter_map(|(id, record)| Some(Registration::from_record(&record)?.view(&id)))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    pub async fn delete(&self, fleet: &str, id: &str) -> Result<(), WebhookError> {
        if !self.store.webhooks().delete_webhook(fleet, id).await? {
            return Err(WebhookError::NotFound);
        }
        self.nudge.notify_one();
        tracing::info!(fleet, webhook = id, "webhook deleted");
        Ok(())
    }
}

/// A URL as logs show it: scheme, host, port and path; the query may
/// carry a token of the receiver's, so it is left out.
pub fn url_for_log(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(body: Value) -> Result<Registration, String> {
        Registration::from_body(&body).map_err(|e| e.to_string())
    }

    #[test]
    fn registrations_are_checked_field_by_field() {
        let ok = read(json!({ "url": "https://h.example/x?k=1", "secret": "0123456789abcdef" })).unwrap();
        assert_eq!(ok.types, None);
        assert!(ok.wants(EventKind::Chat));
        let typed = read(json!({ "url": "http://h.example", "secret": "0123456789abcdef",
            "types": ["position", "chat", "position"] }))
        .unwrap();
        assert_eq!(typed.types, Some(vec!["chat".into(), "position".into()]));
        assert!(typed.wants(EventKind::Position) && !typed.wants(EventKind::Geofence));
        assert_eq!(Registration::from_record(&typed.record()), Some(typed.clone()));
        let view = serde_json::to_value(typed.view("a")).unwrap();
        assert_eq!(view, json!({ "id": "a", "url": "http://h.example/", "types": ["chat", "position"] }));

        let secret = "0123456789abcdef";
        for (body, field) in [
            (json!([]), "payload"),
            (json!({ "secret": secret }), "url: required"),
            (json!({ "url": 5, "secret": secret }), "url: must be a string"),
            (json!({ "url": "ftp://h.example", "secret": secret }), "url: must be http"),
            (json!({ "url": "not a url", "secret": secret }), "url:"),
            (json!({ "url": "https://u:p@h.example", "secret": secret }), "url: credentials"),
            (json!({ "url": "https://h.example/#x", "secret": secret }), "url: must not have a fragment"),
            (json!({ "url": format!("https://h.example/{}", "a".repeat(3000)), "secret": secret }), "url: at most"),
            (json!({ "url": "https://h.example" }), "secret: required"),
            (json!({ "url": "https://h.example", "secret": "short" }), "secret: must be 16"),
            (json!({ "url": "https://h.example", "secret": 7 }), "secret: must be a string"),
            (json!({ "url": "https://h.example", "secret": secret, "types": [] }), "types: must list"),
            (json!({ "url": "https://h.example", "secret": secret, "types": "chat" }), "types: must be an array"),
            (json!({ "url": "https://h.example", "secret": secret, "types": ["chat", "nope"] }), "types[1]"),
            (json!({ "url": "https://h.example", "secret": secret, "extra": 1 }), "extra: unknown field"),
        ] {
            let err = read(body.clone()).unwrap_err();
            assert!(err.starts_with(field), "{body}: {err}");
        }
    }

    #[test]
    fn logged_urls_leave_the_query_out() {
        let url = Url::parse("https://h.example/hook?token=s3cret").unwrap();
        assert_eq!(url_for_log(&url), "https://h.example/hook");
    }
}
