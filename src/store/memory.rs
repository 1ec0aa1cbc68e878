//! The embedded store: everything in process memory, with the same TTL
//! rules as Redis. Expired entries are swept periodically so memory stays
//! bounded by what is live.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use async_trait::async_trait;

use super::{PutOutcome, Scope, Store, StoreError};
use crate::{ids::now_ms, position::Position, session::Session};

const SWEEP_EVERY: Duration = Duration::from_secs(5);

struct Entry {
    ts: i64,
    expires_at: i64,
    encoded: String,
}

#[derive(Default)]
struct State {
    fleets: HashMap<String, HashMap<String, Entry>>,
    sessions: HashMap<String, Session>,
}

pub struct MemoryStore {
    state: Mutex<State>,
    location_ttl_ms: i64,
}

impl MemoryStore {
    /// A new store; spawns its sweeper, which stops when the store is dropped.
    pub fn new(location_ttl_secs: u64) -> Arc<Self> {
        let store = Arc::new(Self {
            state: Mutex::new(State::default()),
            location_ttl_ms: i64::try_from(location_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        });
        tokio::spawn(sweep(Arc::downgrade(&store)));
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind,
        // still consistent entry by entry: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sweep_once(&self) {
        let now = now_ms();
        let mut state = self.lock();
        state.fleets.retain(|_, vehicles| {
            vehicles.retain(|_, e| e.expires_at > now);
            !vehicles.is_empty()
        });
        state.sessions.retain(|_, s| !s.is_expired(now));
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
    async fn put_position(&self, p: &Position, encoded: &str) -> Result<PutOutcome, StoreError> {
        let now = now_ms();
        let mut state = self.lock();
        let vehicles = state.fleets.entry(p.fleet.clone()).or_default();
        if vehicles.get(&p.vehicle_id).is_some_and(|e| e.expires_at > now && e.ts >= p.ts) {
            return Ok(PutOutcome::Stale);
        }
        vehicles.insert(
            p.vehicle_id.clone(),
            Entry { ts: p.ts, expires_at: now.saturating_add(self.location_ttl_ms), encoded: encoded.to_owned() },
        );
        Ok(PutOutcome::Accepted)
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

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
