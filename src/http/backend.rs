//! What the HTTP API needs from the gateway, as an object-safe trait so the
//! routes are plain functions (and can carry OpenAPI annotations) whichever
//! adapter the gateway runs on.

use async_trait::async_trait;
use serde_json::Value;
use socketioxide::adapter::Adapter;

use crate::{
    auth::Authenticator,
    config::Config,
    error::ApiError,
    gateway::{Accepted, Gateway, Source},
    session::Session,
    store::{ChatMessage, Scope, StoreError},
};

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn config(&self) -> &Config;
    fn authenticator(&self) -> &Authenticator;
    async fn publish(&self, session: &Session, payload: &Value) -> Result<Accepted, ApiError>;
    async fn positions(&self, fleet: &str, scope: Scope<'_>) -> Result<Vec<String>, StoreError>;
    async fn post_message(
        &self,
        fleet: &str,
        room: String,
        from: String,
        text: String,
    ) -> Result<ChatMessage, ApiError>;
    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError>;
    async fn revoke(&self, id: &str) -> Result<bool, ApiError>;
    async fn ping(&self) -> Result<(), StoreError>;
    /// Section 11's geofences.
    fn geofences(&self) -> &crate::geofence::Geofences;
}

#[async_trait]
impl<A: Adapter> Backend for Gateway<A> {
    fn config(&self) -> &Config {
        &self.config
    }

    fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    async fn publish(&self, session: &Session, payload: &Value) -> Result<Accepted, ApiError> {
        Gateway::publish(self, session, payload, Source::Http).await
    }

    async fn positions(&self, fleet: &str, scope: Scope<'_>) -> Result<Vec<String>, StoreError> {
        self.store.positions(fleet, scope).await
    }

    async fn post_message(
        &self,
        fleet: &str,
        room: String,
        from: String,
        text: String,
    ) -> Result<ChatMessage, ApiError> {
        let message = Gateway::post_message(self, fleet, room, from, text).await?;
        self.broadcast_message(fleet, &message).await;
        Ok(message)
    }

    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        self.store.session(id).await
    }

    async fn revoke(&self, id: &str) -> Result<bool, ApiError> {
        Gateway::revoke(self, id).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    fn geofences(&self) -> &crate::geofence::Geofences {
        &self.geofences
    }
}
