//! The embedded store: everything in process memory, with the same TTL,
//! cap and presence rules as Redis. Expired entries are swept periodically so memory stays
//! bounded by what is live.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use async_trait::async_trait;

mod events;
mod recovery;
mod webhooks;

use super::{
    ChatMessage, Crossing, CrossingKind, FenceSet, FenceWrite, Offline, PositionWrite, PutOutcome, Retention, Scope,
    Store, StoreError,
    events::{self as stream, EventKind},
};
use crate::lock::MutexExt;
use crate::{clock::now_ms, session::Session};

const SWEEP_EVERY: Duration = Duration::from_secs(5);

struct Entry {
    ts: i64,
    expires_at: i64,
    encoded: String,
    /// The geofences its fix is inside (sorted), as of this position.
    inside: Vec<String>,
}

/// A fleet's geofences.
#[derive(Default)]
struct Fences {
    version: u64,
    /// Id → Feature JSON.
    features: HashMap<String, String>,
}

struct RoomLog {
    messages: VecDeque<ChatMessage>,
    expires_at: i64,
    last_id: (i64, u64),
}

#[derive(Default)]
struct Presence {
    /// Replica → until when its connections count.
    nodes: HashMap<String, i64>,
    /// Until when the vehicle is online without new activity; `None` when offline.
    online_until: Option<i64>,
}

#[derive(Default)]
struct State {
    fleets: HashMap<String, HashMap<String, Entry>>,
    sessions: HashMap<String, Session>,
    /// Keyed by (fleet, room).
    rooms: HashMap<(String, String), RoomLog>,
    /// Keyed by (fleet, vehicle).
    presence: HashMap<(String, String), Presence>,
    fences: HashMap<String, Fences>,
    /// Every fleet's event stream, appended to in the step that changes
    /// the state an event describes.
    events: events::Streams,
    /// Every fleet's webhook registrations (their cursors and leases are
    /// in `events`).
    webhooks: webhooks::Registrations,
}

pub struct MemoryStore {
    state: Mutex<State>,
    retention: Retention,
    recovery: recovery::Recovery,
}

impl MemoryStore {
    /// A new store; spawns its sweeper, which stops when the store is dropped.
    pub fn new(retention: Retention) -> Arc<Self> {
        let mut state = State::default();
        state.events.max = retention.events_max;
        let store = Arc::new(Self { state: Mutex::new(state), retention, recovery: Default::default() });
        tokio::spawn(sweep(Arc::downgrade(&store)));
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind,
        // still consistent entry by entry: keep serving.
        self.state.lock_or_recover()
    }

    /// The compare-and-set of one position, as Redis's script does it.
    fn put_one(&self, state: &mut State, fleet: &str, w: &PositionWrite<'_>, now: i64) -> PutOutcome {
        let (p, encoded) = (w.position, w.encoded);
        let vehicles = match state.fleets.get_mut(fleet) {
            Some(v) => v,
            None => state.fleets.entry(fleet.to_owned()).or_default(),
        };
        let current = vehicles.get(&p.vehicle_id).filter(|e| e.expires_at > now);
        if current.is_some_and(|e| e.ts >= p.ts) {
            return PutOutcome::Stale;
        }
        let crossings = crossings(current.map_or(&[][..], |e| &e.inside), w.inside);
        vehicles.insert(
            p.vehicle_id.clone(),
            Entry {
                ts: p.ts,
                expires_at: now.saturating_add(self.retention.location_ttl_ms),
                encoded: encoded.to_owned(),
                inside: w.inside.to_vec(),
            },
        );
        let stale_after = self.retention.stale_after_ms;
        let back_online = match state.presence.get_mut(&(fleet.to_owned(), p.vehicle_id.clone())) {
            Some(presence) if presence.nodes.values().any(|until| *until > now) => {
                let was_online = presence.online_until.is_some();
                presence.online_until = Some(now + stale_after);
                !was_online
            }
            _ => false,
        };
        // In the order sockets hear them: back online, the position, its crossings.
        if back_online {
            state.events.append(fleet, EventKind::VehicleOnline, &stream::online_data(fleet, &p.vehicle_id, now), now);
        }
        state.events.append(fleet, EventKind::Position, encoded, now);
        for c in &crossings {
            let event = crate::geofence::GeofenceEvent {
                fleet,
                vehicle_id: &p.vehicle_id,
                geofence: &c.geofence,
                kind: c.kind,
                ts: p.ts,
                lat: p.lat,
                lon: p.lon,
            };
            if let Ok(data) = serde_json::to_string(&event) {
                state.events.append(fleet, EventKind::Geofence, &data, now);
            }
        }
        PutOutcome::Accepted { back_online, crossings }
    }

    fn sweep_once(&self) {
        let now = now_ms();
        let mut state = self.lock();
        state.fleets.retain(|_, vehicles| {
            vehicles.retain(|_, e| e.expires_at > now);
            !vehicles.is_empty()
        });
        state.sessions.retain(|_, s| !s.is_expired(now));
        state.rooms.retain(|_, r| r.expires_at > now);
        drop(state);
        self.recovery.sweep(now);
    }
}

async fn sweep(store: Weak<MemoryStore>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        match store.upgrade() {
            Some(store) => store.sweep_once(),
            None => return,
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn recovery(&self) -> &dyn super::recovery::RecoveryStore {
        self
    }

    fn events(&self) -> &dyn stream::EventStream {
        self
    }

    fn webhooks(&self) -> &dyn super::webhooks::WebhookStore {
        self
    }

    async fn put_positions(&self, fleet: &str, writes: &[PositionWrite<'_>]) -> Vec<Result<PutOutcome, StoreError>> {
        let now = now_ms();
        let mut state = self.lock();
        let version = state.fences.get(fleet).map_or(0, |f| f.version);
        if writes.first().is_some_and(|w| w.fences_version != version) {
            return writes.iter().map(|_| Err(StoreError::FencesChanged)).collect();
        }
        writes.iter().map(|w| Ok(self.put_one(&mut state, fleet, w, now))).collect()
    }

    async fn positions(&self, fleet: &str, scope: Scope<'_>) -> Result<Vec<String>, StoreError> {
        let now = now_ms();
        let state = self.lock();
        let Some(vehicles) = state.fleets.get(fleet) else { return Ok(Vec::new()) };
        let live = |e: &&Entry| e.expires_at > now;
        Ok(match scope {
            Scope::Fleet => vehicles.values().filter(live).map(|e| e.encoded.clone()).collect(),
            Scope::Vehicles(ids) => {
                ids.iter().filter_map(|id| vehicles.get(id)).filter(live).map(|e| e.encoded.clone()).collect()
            }
        })
    }

    async fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        self.lock().sessions.insert(session.session_id.clone(), session.clone());
        Ok(())
    }

    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let now = now_ms();
        Ok(self.lock().sessions.get(id).filter(|s| !s.is_expired(now)).cloned())
    }

    async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        Ok(self.lock().sessions.remove(id).is_some_and(|s| !s.is_expired(now)))
    }

    async fn append_message(&self, fleet: &str, mut message: ChatMessage) -> Result<ChatMessage, StoreError> {
        let now = now_ms();
        let mut state = self.lock();
        let log = state.rooms.entry((fleet.to_owned(), message.room.clone())).or_insert_with(|| RoomLog {
            messages: VecDeque::new(),
            expires_at: 0,
            last_id: (0, 0),
        });
        if log.expires_at <= now {
            log.messages.clear();
        }
        // Ids like Redis stream ids: increasing even when the clock is not.
        let id = if message.ts > log.last_id.0 { (message.ts, 0) } else { (log.last_id.0, log.last_id.1 + 1) };
        log.last_id = id;
        message.id = format!("{}-{}", id.0, id.1);
        log.messages.push_back(message.clone());
        while log.messages.len() > self.retention.history_max {
            log.messages.pop_front();
        }
        log.expires_at = now.saturating_add(self.retention.history_ttl_ms);
        if let Ok(data) = serde_json::to_string(&message) {
            state.events.append(fleet, EventKind::Chat, &data, now);
        }
        Ok(message)
    }

    async fn history(
        &self,
        fleet: &str,
        room: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let now = now_ms();
        let state = self.lock();
        let Some(log) = state.rooms.get(&(fleet.to_owned(), room.to_owned())).filter(|l| l.expires_at > now) else {
            return Ok(Vec::new());
        };
        let before = before.and_then(parse_id);
        let older: Vec<&ChatMessage> =
            log.messages.iter().filter(|m| before.is_none_or(|b| parse_id(&m.id).is_some_and(|id| id < b))).collect();
        Ok(older[older.len().saturating_sub(limit)..].iter().map(|m| (*m).clone()).collect())
    }

    async fn vehicle_connected(&self, fleet: &str, vehicle: &str, node: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let (ttl, stale_after) = (self.retention.presence_ttl_ms, self.retention.stale_after_ms);
        let mut state = self.lock();
        let presence = state.presence.entry((fleet.to_owned(), vehicle.to_owned())).or_default();
        presence.nodes.insert(node.to_owned(), now + ttl);
        let was_online = presence.online_until.is_some_and(|u| u > now);
        presence.online_until = Some(now + stale_after);
        if !was_online {
            state.events.append(fleet, EventKind::VehicleOnline, &stream::online_data(fleet, vehicle, now), now);
        }
        Ok(!was_online)
    }

    async fn vehicle_disconnected(&self, fleet: &str, vehicle: &str, node: &str) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let stale_after = self.retention.stale_after_ms;
        let mut state = self.lock();
        let key = (fleet.to_owned(), vehicle.to_owned());
        let Some(presence) = state.presence.get_mut(&key) else { return Ok(None) };
        presence.nodes.remove(node);
        presence.nodes.retain(|_, until| *until > now);
        if !presence.nodes.is_empty() {
            return Ok(None);
        }
        let last_seen = presence.online_until.map(|u| u - stale_after);
        state.presence.remove(&key);
        if let Some(last_seen) = last_seen {
            state.events.append(
                fleet,
                EventKind::VehicleOffline,
                &stream::offline_data(fleet, vehicle, last_seen),
                now,
            );
        }
        Ok(last_seen)
    }

    async fn refresh_presence(&self, node: &str, vehicles: &[(String, String)]) -> Result<(), StoreError> {
        let until = now_ms() + self.retention.presence_ttl_ms;
        let mut state = self.lock();
        for key in vehicles {
            if let Some(p) = state.presence.get_mut(key) {
                p.nodes.insert(node.to_owned(), until);
            }
        }
        Ok(())
    }

    async fn sweep_presence(&self) -> Result<Vec<Offline>, StoreError> {
        let now = now_ms();
        let stale_after = self.retention.stale_after_ms;
        let mut out = Vec::new();
        let mut state = self.lock();
        state.presence.retain(|(fleet, vehicle), p| {
            p.nodes.retain(|_, until| *until > now);
            let Some(until) = p.online_until else { return !p.nodes.is_empty() };
            if until <= now || p.nodes.is_empty() {
                out.push(Offline { fleet: fleet.clone(), vehicle: vehicle.clone(), last_seen: until - stale_after });
                p.online_until = None;
            }
            !p.nodes.is_empty()
        });
        for o in &out {
            let data = stream::offline_data(&o.fleet, &o.vehicle, o.last_seen);
            state.events.append(&o.fleet, EventKind::VehicleOffline, &data, now);
        }
        Ok(out)
    }

    async fn put_geofence(&self, fleet: &str, id: &str, feature: &str, max: usize) -> Result<FenceWrite, StoreError> {
        let mut state = self.lock();
        let fences = state.fences.entry(fleet.to_owned()).or_default();
        let created = !fences.features.contains_key(id);
        if created && fences.features.len() >= max {
            return Ok(FenceWrite::Full);
        }
        fences.features.insert(id.to_owned(), feature.to_owned());
        fences.version += 1;
        Ok(FenceWrite::Stored { created, version: fences.version })
    }

    async fn delete_geofence(&self, fleet: &str, id: &str) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let Some(fences) = state.fences.get_mut(fleet) else { return Ok(false) };
        if fences.features.remove(id).is_none() {
            return Ok(false);
        }
        fences.version += 1;
        // Nobody inside gets an exit, and a geofence created again under
        // this id starts empty.
        if let Some(vehicles) = state.fleets.get_mut(fleet) {
            vehicles.values_mut().for_each(|e| e.inside.retain(|g| g != id));
        }
        Ok(true)
    }

    async fn geofences(&self, fleet: &str) -> Result<FenceSet, StoreError> {
        let state = self.lock();
        Ok(state.fences.get(fleet).map_or_else(FenceSet::default, |f| FenceSet {
            version: f.version,
            features: f.features.iter().map(|(id, json)| (id.clone(), json.clone())).collect(),
        }))
    }

    async fn geofence(&self, fleet: &str, id: &str) -> Result<Option<(String, Vec<String>)>, StoreError> {
        let now = now_ms();
        let state = self.lock();
        let Some(feature) = state.fences.get(fleet).and_then(|f| f.features.get(id)) else { return Ok(None) };
        let mut inside: Vec<String> = state.fleets.get(fleet).map_or_else(Vec::new, |vehicles| {
            vehicles
                .iter()
                .filter(|(_, e)| e.expires_at > now && e.inside.iter().any(|g| g == id))
                .map(|(v, _)| v.clone())
                .collect()
        });
        inside.sort();
        Ok(Some((feature.clone(), inside)))
    }

    async fn geofence_versions(&self, fleets: &[String]) -> Result<Vec<u64>, StoreError> {
        let state = self.lock();
        Ok(fleets.iter().map(|f| state.fences.get(f).map_or(0, |f| f.version)).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What a vehicle inside `before` crossed to be inside `after` (both
/// sorted): exits first, then entries, each in id order. The store's
/// script does the same.
pub fn crossings(before: &[String], after: &[String]) -> Vec<Crossing> {
    let exits = before.iter().filter(|g| after.binary_search(g).is_err()).map(|g| (g, CrossingKind::Exit));
    let enters = after.iter().filter(|g| before.binary_search(g).is_err()).map(|g| (g, CrossingKind::Enter));
    exits.chain(enters).map(|(g, kind)| Crossing { geofence: g.clone(), kind }).collect()
}

fn parse_id(id: &str) -> Option<(i64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
