//! Where state lives: sessions, every vehicle's last-known position,
//! vehicle presence, room history and each fleet's event stream, with
//! their TTLs and caps. One trait, two implementations: [`memory`] for the
//! embedded single node, [`redis`] for replicas sharing a Redis.

pub mod events;
pub mod memory;
pub mod recovery;
pub mod redis;
pub mod webhooks;

use async_trait::async_trait;

use crate::{position::Position, session::Session};

/// Why the store could not answer. Every variant means the same thing to
/// a client (`unavailable`); the detail is for logs and metrics. Cloned
/// when one failed call answers every update of a batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("storage timed out")]
    Timeout,
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The fleet's geofences changed since the writes were tested against
    /// them: nothing was written; test again against the new ones.
    #[error("geofences changed")]
    FencesChanged,
}

/// The result of offering a position to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Newer than what was stored: stored, and announced to other replicas.
    /// `back_online`: the vehicle is connected and had gone stale, so this
    /// update makes it online again. `crossings`: the geofences it entered
    /// or left (section 11), decided in the same step.
    Accepted { back_online: bool, crossings: Vec<Crossing> },
    /// Not newer than the stored position: dropped.
    Stale,
}

/// One position offered to the store as part of a fleet's batch
/// ([`Store::put_positions`]).
#[derive(Debug, Clone, Copy)]
pub struct PositionWrite<'a> {
    pub position: &'a Position,
    /// Its position event, encoded once: what the store keeps and announces.
    pub encoded: &'a str,
    /// When its sender began waiting: the write's fence counts from here,
    /// so an update that queued behind a slow call is fenced as early as
    /// one sent alone.
    pub started: std::time::Instant,
    /// The ids of the fleet's geofences holding the fix (sorted), as the
    /// replica's index found them.
    pub inside: &'a [String],
    /// The fleet's geofence version `inside` was computed at; the store
    /// refuses the call ([`StoreError::FencesChanged`]) when it stores
    /// another. Every write of one call carries the same.
    pub fences_version: u64,
}

impl<'a> PositionWrite<'a> {
    /// A write tested against no geofences (version 0: a fleet that never had any).
    pub fn new(position: &'a Position, encoded: &'a str, started: std::time::Instant) -> Self {
        Self { position, encoded, started, inside: &[], fences_version: 0 }
    }
}

pub use crate::geofence::{Crossing, CrossingKind};

/// Reads `<ms>-<seq>`, the grammar of Redis stream ids that both the
/// events stream and the recovery log's offsets use (each part at most 20
/// digits); `None` for anything else.
fn parse_ms_seq(s: &str) -> Option<(u64, u64)> {
    let (ms, seq) = s.split_once('-')?;
    let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// A fleet's stored geofences (section 11) with their version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FenceSet {
    /// Bumped by every create, replace and delete.
    pub version: u64,
    /// (id, Feature JSON), in no particular order.
    pub features: Vec<(String, String)>,
}

/// The result of storing a geofence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceWrite {
    Stored {
        created: bool,
        version: u64,
    },
    /// A new id over the fleet's cap: nothing stored.
    Full,
}

/// What a snapshot covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Fleet,
    Vehicles(&'a [String]),
}

/// A stored room message (section 6).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ChatMessage {
    /// Opaque, increasing within a room: `<ms>-<seq>`.
    pub id: String,
    pub room: String,
    pub from: String,
    pub text: String,
    pub ts: i64,
}

/// A vehicle that just went offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offline {
    pub fleet: String,
    pub vehicle: String,
    /// Ms since epoch of its last activity.
    pub last_seen: i64,
}

/// Lifetimes and caps the stores apply.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub location_ttl_ms: i64,
    /// A vehicle with no activity for this long is offline.
    pub stale_after_ms: i64,
    /// A replica that stops refreshing its connections is presumed dead after this.
    pub presence_ttl_ms: i64,
    pub history_max: usize,
    pub history_ttl_ms: i64,
    /// Events kept per fleet's event stream (section 12); 0: none kept.
    pub events_max: usize,
}

impl Retention {
    pub fn from_config(c: &crate::config::Config) -> Self {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Self {
            location_ttl_ms: ms(c.location_ttl_secs),
            stale_after_ms: ms(c.stale_after_secs),
            presence_ttl_ms: ms(c.presence_ttl_secs),
            history_max: c.history_max,
            history_ttl_ms: ms(c.history_ttl_secs),
            events_max: c.events_max,
        }
    }
}

/// Whether `s` has the shape of a [`ChatMessage`] id.
pub fn is_message_id(s: &str) -> bool {
    let mut parts = s.splitn(2, '-');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next())
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// What connection state recovery keeps (section 10).
    fn recovery(&self) -> &dyn recovery::RecoveryStore;

    /// The fleets' event streams, their leases and cursors (section 12).
    fn events(&self) -> &dyn events::EventStream;

    /// The fleets' webhook registrations (section 12).
    fn webhooks(&self) -> &dyn webhooks::WebhookStore;

    /// Offers a batch of one fleet's positions, in order: each is stored if
    /// its `ts` is newer than its vehicle's stored one (a later write of the
    /// same vehicle meets the earlier one's result), and those stored are
    /// announced to the other replicas together, all in one round trip and
    /// atomically. One result per write, in order; a write answered with an
    /// error was not stored and never will be.
    async fn put_positions(&self, fleet: &str, writes: &[PositionWrite<'_>]) -> Vec<Result<PutOutcome, StoreError>>;

    /// [`Store::put_positions`] of one position.
    async fn put_position(&self, position: &Position, encoded: &str) -> Result<PutOutcome, StoreError> {
        let write = PositionWrite::new(position, encoded, std::time::Instant::now());
        self.put_positions(&position.fleet, &[write]).await.pop().unwrap_or(Err(StoreError::Timeout))
    }

    /// Last-known, unexpired positions of a fleet, as encoded events.
    async fn positions(&self, fleet: &str, scope: Scope<'_>) -> Result<Vec<String>, StoreError>;

    /// Saves a new session until its `expires_at`.
    async fn create_session(&self, session: &Session) -> Result<(), StoreError>;

    /// A live session by id.
    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError>;

    /// Deletes a session; whether it existed.
    async fn delete_session(&self, id: &str) -> Result<bool, StoreError>;

    /// Appends a message to a room's history (capped, with a TTL) and returns it with its id.
    async fn append_message(&self, fleet: &str, message: ChatMessage) -> Result<ChatMessage, StoreError>;

    /// Up to `limit` messages older than `before` (all when `None`), oldest first.
    async fn history(
        &self,
        fleet: &str,
        room: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// A vehicle's first socket on replica `node` connected; whether it became online.
    async fn vehicle_connected(&self, fleet: &str, vehicle: &str, node: &str) -> Result<bool, StoreError>;

    /// A vehicle's last socket on `node` is gone; its last-seen time when it became offline.
    async fn vehicle_disconnected(&self, fleet: &str, vehicle: &str, node: &str) -> Result<Option<i64>, StoreError>;

    /// Keeps `node`'s connected vehicles alive (called periodically).
    async fn refresh_presence(&self, node: &str, vehicles: &[(String, String)]) -> Result<(), StoreError>;

    /// Vehicles gone stale, or whose replicas stopped refreshing them; each
    /// is returned to exactly one caller across replicas.
    async fn sweep_presence(&self) -> Result<Vec<Offline>, StoreError>;

    /// Creates or replaces a fleet's geofence (its Feature JSON), unless
    /// it is new and the fleet already has `max`; bumps the version.
    async fn put_geofence(&self, fleet: &str, id: &str, feature: &str, max: usize) -> Result<FenceWrite, StoreError>;

    /// Deletes a geofence and forgets who was inside it (nobody gets an
    /// `exit`); bumps the version. Whether it existed.
    async fn delete_geofence(&self, fleet: &str, id: &str) -> Result<bool, StoreError>;

    /// Every geofence of a fleet, with the version they are at, read together.
    async fn geofences(&self, fleet: &str) -> Result<FenceSet, StoreError>;

    /// One geofence's Feature JSON and the vehicles inside it now (sorted).
    async fn geofence(&self, fleet: &str, id: &str) -> Result<Option<(String, Vec<String>)>, StoreError>;

    /// The geofence versions of these fleets (0: never had any), in order.
    async fn geofence_versions(&self, fleets: &[String]) -> Result<Vec<u64>, StoreError>;

    /// Whether the backing service answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}
