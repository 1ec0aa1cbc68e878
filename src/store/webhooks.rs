//! Where webhook registrations (contract section 12) are kept: per fleet,
//! beside the fleet's event stream (Redis: the hash `fg:{<fleet>}:webhooks`,
//! id → the registration's JSON, in the fleet's cluster slot), plus the
//! set `fg:webhooks:fleets` of fleets that have had one, which is how
//! every replica finds them.
//!
//! A webhook reads its fleet's stream as the consumer [`consumer`]`(id)`,
//! under the lease of the same name. Creating one sets its cursor to the
//! stream's newest event in the same step (so it gets every event from
//! its registration on, and none from before); deleting one forgets its
//! cursor and lease in the same step, so a replica still delivering to it
//! loses the lease at its next renewal or cursor write and stops.

use async_trait::async_trait;

use super::{StoreError, events::Cursor};

/// A webhook's consumer and lease name in its fleet's stream.
pub fn consumer(id: &str) -> String {
    format!("webhook:{id}")
}

/// The cursor of a webhook created while its fleet's stream was empty:
/// before the first event (ordinal 0), so that every event is after it.
/// A webhook always has a cursor, so a missing one means it is gone.
pub const START: Cursor = Cursor { id: super::events::StreamId { ms: 0, seq: 0 }, ordinal: 0 };

/// The result of storing a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookWrite {
    Stored {
        created: bool,
    },
    /// A new id over the fleet's cap: nothing stored.
    Full,
}

#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores `record` (the registration's JSON) as `fleet`'s webhook
    /// `id`, unless it is new and the fleet has `max` already. A new one's
    /// cursor is the stream's newest event (or [`START`]); a replaced one
    /// keeps its cursor.
    async fn put_webhook(&self, fleet: &str, id: &str, record: &str, max: usize) -> Result<WebhookWrite, StoreError>;

    /// Deletes a webhook with its cursor and lease. Whether it existed.
    async fn delete_webhook(&self, fleet: &str, id: &str) -> Result<bool, StoreError>;

    /// `fleet`'s webhooks: (id, record), in no particular order.
    async fn webhooks(&self, fleet: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// The fleets that have had a webhook (some may have none left).
    async fn webhook_fleets(&self) -> Result<Vec<String>, StoreError>;
}
