//! Webhook registrations of the embedded store (see
//! [`crate::store::webhooks`]): a map per fleet, and each webhook's
//! cursor and lease set under the store's lock in the same step.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use super::MemoryStore;
use crate::store::{
    StoreError,
    webhooks::{self, WebhookStore, WebhookWrite},
};

/// Fleet → webhook id → record.
pub(super) type Registrations = HashMap<String, BTreeMap<String, String>>;

#[async_trait]
impl WebhookStore for MemoryStore {
    async fn put_webhook(&self, fleet: &str, id: &str, record: &str, max: usize) -> Result<WebhookWrite, StoreError> {
        let mut state = self.lock();
        let fleet_hooks = state.webhooks.entry(fleet.to_owned()).or_default();
        if let Some(existing) = fleet_hooks.get_mut(id) {
            record.clone_into(existing);
            return Ok(WebhookWrite::Stored { created: false });
        }
        if fleet_hooks.len() >= max {
            return Ok(WebhookWrite::Full);
        }
        fleet_hooks.insert(id.to_owned(), record.to_owned());
        let cursor = state.events.newest(fleet).unwrap_or(webhooks::START);
        state.events.reset(fleet, &webhooks::consumer(id), Some(cursor));
        Ok(WebhookWrite::Stored { created: true })
    }

    async fn delete_webhook(&self, fleet: &str, id: &str) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let existed = state.webhooks.get_mut(fleet).and_then(|hooks| hooks.remove(id)).is_some();
        state.events.reset(fleet, &webhooks::consumer(id), None);
        Ok(existed)
    }

    async fn webhooks(&self, fleet: &str) -> Result<Vec<(String, String)>, StoreError> {
        let state = self.lock();
        Ok(state
            .webhooks
            .get(fleet)
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    async fn webhook_fleets(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().webhooks.keys().cloned().collect())
    }
}
