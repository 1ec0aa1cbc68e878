//! The shared store: sessions and positions in Redis, so any replica can
//! serve any client. The position compare-and-set, its TTL, the fleet index
//! and the announcement to other replicas happen in one Lua script, called
//! once for a batch of one fleet's updates (see [`crate::gateway::publish`]):
//! one round trip per batch, atomic across replicas.
//!
//! Key layout (`{fleet}` is a hash tag, so a fleet's keys share a slot on a
//! Redis Cluster and the script stays single-slot):
//! - `fg:{<fleet>}:pos:<vehicle>`: hash `t` (fix time), `p` (encoded event), TTL
//! - `fg:{<fleet>}:idx`: sorted set of vehicle ids scored by expiry (ms)
//! - `fg:{<fleet>}:positions`: the sharded channel (`SPUBLISH`) other
//!   replicas listen on, in the fleet's slot like its keys (named, and its
//!   messages' format stated, in [`crate::replication::wire`])
//! - `fg:{<fleet>}:presence`: sorted set of online vehicles scored by when
//!   they go stale (ms)
//! - `fg:{<fleet>}:conns:<vehicle>`: sorted set of replicas holding a socket
//!   of the vehicle, scored by when that claim lapses unless refreshed
//! - `fg:{<fleet>}:room:<room>`: the room's history, a capped stream with a TTL
//! - `fg:{<fleet>}:geofences`: hash geofence id → its Feature JSON;
//!   `fg:{<fleet>}:geofences:version`: counter bumped by every change;
//!   `fg:{<fleet>}:fence-inside:<geofence>`: set of vehicles inside; the
//!   position hash's field `g` holds the geofences its fix is inside
//! - `fg:{<fleet>}:events`: the fleet's event stream (section 12), capped,
//!   appended to by the scripts that store what its events describe, and
//!   `fg:{<fleet>}:events:n` the ordinal of its last event;
//!   `fg:{<fleet>}:lease:<name>`, `fg:{<fleet>}:cursor:<consumer>`: its
//!   readers' leases and cursors; `fg:events:fleets`: set of fleets that
//!   have had events (`redis::events`)
//! - `fg:presence:fleets`: set of fleets that have had presence, for the sweep
//! - `fg:session:<id>`: the session JSON, TTL until it expires
//! - `fg:{<fleet>}:webhooks`: hash webhook id → its registration
//!   (`redis::webhooks`); `fg:webhooks:fleets`: set of fleets that have had one
//! - `fg:{<fleet>}:recovery`, `fg:{<fleet>}:rsock:<pid>`: connection state
//!   recovery's event log and socket records (`redis::recovery`)
//!
//! The same store runs on one Redis, on a Redis Cluster, or on the primary
//! Sentinel names (`connection`): every script's keys share their fleet's slot,
//! and the one multi-key pipeline (presence refresh) is split per fleet on
//! a cluster.

//!
//! The modules: `keys` names every key; `connection` makes the pool
//! (one Redis, cluster, Sentinel's primary) and `call` bounds, retries and
//! fences each call; then one module per concern, each with its scripts
//! (`lua/*.lua`, KEYS and ARGV documented at their top): `positions`,
//! `sessions`, `chat`, `presence`, `geofences`, `events`, `recovery`,
//! `webhooks`. The `Store` impl below only routes to them.

mod call;
mod chat;
mod connection;
mod events;
mod geofences;
mod keys;
mod positions;
mod presence;
mod recovery;
mod sessions;
mod webhooks;

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicI64, AtomicU64, AtomicUsize},
};

use async_trait::async_trait;
use redis::Script;

pub use connection::ConnectError;

use super::{
    ChatMessage, FenceSet, FenceWrite, Offline, PositionWrite, PutOutcome, Retention, Scope, Store, StoreError,
};
use crate::{redis_target::RedisTarget, sentinel::PrimaryWatch, session::Session};

/// A script that appends events: [`events::APPEND_LUA`], then `body`.
fn with_events(body: &str) -> Script {
    Script::new(&format!("{}{body}", events::APPEND_LUA))
}

pub struct RedisStore {
    /// Replaced whole when Sentinel names a new primary.
    connections: Arc<RwLock<Vec<connection::Connection>>>,
    /// A pipeline may only carry keys of one slot on a cluster.
    cluster: bool,
    next: AtomicUsize,
    /// Batches sent since start; every few also prunes its fleet's index.
    batches: AtomicU64,
    retention: Retention,
    /// Sweeps since start; every few, the sweep also looks for dead replicas.
    sweeps: AtomicU64,
    /// Prefix of this replica's announcements, so it can skip its own.
    node_id: String,
    /// Redis's clock minus ours, in ms, as last measured by a quick reply:
    /// the fence of a position write is a time on Redis's clock.
    clock_offset_ms: AtomicI64,
    /// The fleets this replica listed as having events.
    noted: Arc<events::Noted>,
}

impl RedisStore {
    /// Connections for `target`; in Sentinel mode, to the primary `primary`
    /// names, rebuilt each time it names another.
    pub fn new(
        target: &RedisTarget,
        pool_size: usize,
        retention: Retention,
        node_id: String,
        primary: Option<Arc<PrimaryWatch>>,
    ) -> Result<Self, ConnectError> {
        crate::metrics::preregister_redis();
        Ok(Self {
            connections: connection::pool(target, pool_size, primary)?,
            cluster: target.is_cluster(),
            next: AtomicUsize::new(0),
            batches: AtomicU64::new(0),
            retention,
            sweeps: AtomicU64::new(0),
            node_id,
            clock_offset_ms: AtomicI64::new(0),
            noted: Default::default(),
        })
    }
}

#[async_trait]
impl Store for RedisStore {
    fn recovery(&self) -> &dyn super::recovery::RecoveryStore {
        self
    }

    fn events(&self) -> &dyn super::events::EventStream {
        self
    }

    fn webhooks(&self) -> &dyn super::webhooks::WebhookStore {
        self
    }

    async fn put_positions(&self, fleet: &str, writes: &[PositionWrite<'_>]) -> Vec<Result<PutOutcome, StoreError>> {
        positions::put(self, fleet, writes).await
    }

    async fn positions(&self, fleet: &str, scope: Scope<'_>) -> Result<Vec<String>, StoreError> {
        positions::read(self, fleet, scope).await
    }

    async fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        sessions::create(self, session).await
    }

    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        sessions::get(self, id).await
    }

    async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        sessions::delete(self, id).await
    }

    async fn append_message(&self, fleet: &str, message: ChatMessage) -> Result<ChatMessage, StoreError> {
        chat::append(self, fleet, message).await
    }

    async fn history(
        &self,
        fleet: &str,
        room: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        chat::history(self, fleet, room, limit, before).await
    }

    async fn vehicle_connected(&self, fleet: &str, vehicle: &str, node: &str) -> Result<bool, StoreError> {
        presence::connected(self, fleet, vehicle, node).await
    }

    async fn vehicle_disconnected(&self, fleet: &str, vehicle: &str, node: &str) -> Result<Option<i64>, StoreError> {
        presence::disconnected(self, fleet, vehicle, node).await
    }

    async fn refresh_presence(&self, node: &str, vehicles: &[(String, String)]) -> Result<(), StoreError> {
        presence::refresh(self, node, vehicles).await
    }

    async fn sweep_presence(&self) -> Result<Vec<Offline>, StoreError> {
        presence::sweep(self).await
    }

    async fn put_geofence(&self, fleet: &str, id: &str, feature: &str, max: usize) -> Result<FenceWrite, StoreError> {
        geofences::put(self, fleet, id, feature, max).await
    }

    async fn delete_geofence(&self, fleet: &str, id: &str) -> Result<bool, StoreError> {
        geofences::delete(self, fleet, id).await
    }

    async fn geofences(&self, fleet: &str) -> Result<FenceSet, StoreError> {
        geofences::all(self, fleet).await
    }

    async fn geofence(&self, fleet: &str, id: &str) -> Result<Option<(String, Vec<String>)>, StoreError> {
        geofences::one(self, fleet, id).await
    }

    async fn geofence_versions(&self, fleets: &[String]) -> Result<Vec<u64>, StoreError> {
        geofences::versions(self, fleets).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_any().await
    }
}
