//! Where state lives: sessions and every vehicle's last-known position,
//! with their TTLs. One trait, two implementations: [`memory`] for the
//! embedded single node, [`redis`] for replicas sharing a Redis.

pub mod memory;
pub mod redis;

use async_trait::async_trait;

use crate::{position::Position, session::Session};

/// Why the store could not answer. Every variant means the same thing to
/// a client (`unavailable`); the detail is for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("storage timed out")]
    Timeout,
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// The result of offering a position to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Newer than what was stored: stored, and announced to other replicas.
    Accepted,
    /// Not newer than the stored position: dropped.
    Stale,
}

/// What a snapshot covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Fleet,
    Vehicles(&'a [String]),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores `position` (whose encoded event is `encoded`) if its `ts` is
    /// newer than the stored one, atomically, and on success announces it
    /// to the other replicas, all in one round trip.
    async fn put_position(&self, position: &Position, encoded: &str) -> Result<PutOutcome, StoreError>;

    /// Last-known, unexpired positions of a fleet, as encoded events.
    async fn positions(&self, fleet: &str, scope: Scope<'_>) -> Result<Vec<String>, StoreError>;

    /// Saves a new session until its `expires_at`.
    async fn create_session(&self, session: &Session) -> Result<(), StoreError>;

    /// A live session by id.
    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError>;

    /// Deletes a session; whether it existed.
    async fn delete_session(&self, id: &str) -> Result<bool, StoreError>;

    /// Whether the backing service answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}
