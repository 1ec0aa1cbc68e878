//! What the HTTP API needs from the gateway, as an object-safe trait so the
//! routes are plain functions (and can carry OpenAPI annotations) whichever
//! adapter the gateway runs on. Reads go to the store directly; what a
//! socket could also do (publish, post to a room, revoke) goes through the
//! gateway, so both take the same path.

use async_trait::async_trait;
use serde_json::Value;
use socketioxide::adapter::Adapter;

use crate::{
    auth::Authenticator,
    config::Config,
    error::ApiError,
    gateway::{Accepted, Gateway, Source},
    geofence::Geofences,
    session::Session,
    store::{ChatMessage, Store},
};

/// Who a room message posted through the API is from.
const SERVER: &str = "server";

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn config(&self) -> &Config;
    fn authenticator(&self) -> &Authenticator;
    fn store(&self) -> &dyn Store;
    /// Section 11's geofences.
    fn geofences(&self) -> &Geofences;
    async fn publish(&self, session: &Session, payload: &Value) -> Result<Accepted, ApiError>;
    /// Stores a message from the server in a room and sends it to the
    /// room's members on every replica.
    async fn post_message(&self, fleet: &str, room: String, text: String) -> Result<ChatMessage, ApiError>;
    async fn revoke(&self, id: &str) -> Result<bool, ApiError>;
}

#[async_trait]
impl<A: Adapter> Backend for Gateway<A> {
    fn config(&self) -> &Config {
        &self.config
    }

    fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    fn store(&self) -> &dyn Store {
        &*self.store
    }

    fn geofences(&self) -> &Geofences {
        &self.geofences
    }

    async fn publish(&self, session: &Session, payload: &Value) -> Result<Accepted, ApiError> {
        Gateway::publish(self, session, payload, Source::Http).await
    }

    async fn post_message(&self, fleet: &str, room: String, text: String) -> Result<ChatMessage, ApiError> {
        let message = Gateway::post_message(self, fleet, room, SERVER.to_owned(), text).await?;
        self.broadcast_message(fleet, &message).await;
        Ok(message)
    }

    async fn revoke(&self, id: &str) -> Result<bool, ApiError> {
        Gateway::revoke(self, id).await
    }
}
