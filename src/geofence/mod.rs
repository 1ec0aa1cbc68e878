//! Geofences (contract section 11): named areas per fleet, and the
//! `enter`/`exit` of a vehicle crossing one.
//!
//! - [`shape`] reads and validates a geofence's GeoJSON Feature (its
//!   topology through `valid`, in O(n log n)).
//! - [`index`] is one fleet's geofences as a replica tests fixes against
//!   them (an R-tree of boxes, then exact tests).
//! - [`Geofences`] (here) keeps every fleet's index on this replica and
//!   is what the HTTP API writes through; [`sync`] keeps the indexes
//!   current with the store.
//!
//! Exactly once: the replica only *computes* which geofences hold a fix.
//! The store diffs that set against the vehicle's stored one in the same
//! atomic step as the position's compare-and-set, so only an accepted
//! update can cross, and two replicas never both see one crossing. The
//! step also checks the fleet's geofence version the set was computed at:
//! a replica behind is refused before anything is written, reloads and
//! tests again ([`crate::gateway::publish`]).

pub mod index;
pub mod shape;
pub mod sync;
mod valid;

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicI64, Ordering},
    },
};

use serde::Serialize;
use serde_json::Value;

pub use index::FleetIndex;
pub use shape::{Shape, ShapeError};

use crate::lock::RwLockExt;
use crate::{
    metrics::names,
    store::{FenceSet, FenceWrite, Store, StoreError},
};

/// Which way a vehicle crossed (`kind` of the event and of
/// `fleetgate_geofence_events_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrossingKind {
    Enter,
    Exit,
}

impl CrossingKind {
    pub const ALL: &'static [Self] = &[Self::Enter, Self::Exit];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enter => "enter",
            Self::Exit => "exit",
        }
    }
}

impl From<CrossingKind> for metrics::SharedString {
    fn from(kind: CrossingKind) -> Self {
        metrics::SharedString::const_str(kind.as_str())
    }
}

impl Serialize for CrossingKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One geofence an accepted update entered or left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub geofence: String,
    pub kind: CrossingKind,
}

impl Crossing {
    /// Reads the store's (and the replication wire's) list of crossings:
    /// `+<id>` entered, `-<id>` left, separated by spaces. Geofence ids
    /// hold no spaces (id grammar); anything else is skipped.
    pub fn parse_list(s: &str) -> Vec<Crossing> {
        s.split(' ')
            .filter_map(|c| {
                let (kind, id) = match c.as_bytes().first()? {
                    b'+' => (CrossingKind::Enter, &c[1..]),
                    b'-' => (CrossingKind::Exit, &c[1..]),
                    _ => return None,
                };
                crate::ids::is_valid_id(id).then(|| Crossing { geofence: id.to_owned(), kind })
            })
            .collect()
    }

    /// The inverse of [`Crossing::parse_list`].
    pub fn encode_list(crossings: &[Crossing]) -> String {
        let mut out = String::new();
        for (i, c) in crossings.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push(if c.kind == CrossingKind::Enter { '+' } else { '-' });
            out.push_str(&c.geofence);
        }
        out
    }
}

/// The `geofence` event (section 11).
#[derive(Debug, Serialize)]
pub struct GeofenceEvent<'a> {
    pub fleet: &'a str,
    #[serde(rename = "vehicleId")]
    pub vehicle_id: &'a str,
    pub geofence: &'a str,
    pub kind: CrossingKind,
    pub ts: i64,
    pub lat: f64,
    pub lon: f64,
}

/// Why a geofence request failed; [`crate::error`] maps it to a code.
#[derive(Debug, thiserror::Error)]
pub enum GeofenceError {
    #[error(transparent)]
    Invalid(#[from] ShapeError),
    #[error("at most {0} geofences per fleet")]
    Full(usize),
    #[error("no such geofence")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every fleet's geofence index on this replica, and the writes of the HTTP API.
pub struct Geofences {
    store: Arc<dyn Store>,
    fleets: RwLock<HashMap<String, Indexed>>,
    max_vertices: usize,
    max_per_fleet: usize,
}

/// A fleet's index and when a position last used it (ms): a fleet whose
/// vehicles went quiet is dropped by the sync ([`sync::IDLE`]), so neither
/// the map nor the sync's one version read per fleet grows with every
/// fleet this replica ever saw.
struct Indexed {
    index: Arc<FleetIndex>,
    used_ms: AtomicI64,
}

impl Indexed {
    fn new(index: Arc<FleetIndex>) -> Self {
        Self { index, used_ms: AtomicI64::new(crate::clock::now_ms()) }
    }
}

impl Geofences {
    pub fn new(store: Arc<dyn Store>, max_vertices: usize, max_per_fleet: usize) -> Arc<Self> {
        metrics::gauge!(names::GEOFENCES).set(0.0);
        Arc::new(Self { store, fleets: RwLock::new(HashMap::new()), max_vertices, max_per_fleet })
    }

    fn cached(&self, fleet: &str) -> Option<Arc<FleetIndex>> {
        let fleets = self.fleets.read_or_recover();
        let entry = fleets.get(fleet)?;
        entry.used_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
        Some(entry.index.clone())
    }

    /// The fleet's index, read from the store the first time.
    pub async fn index(&self, fleet: &str) -> Result<Arc<FleetIndex>, StoreError> {
        match self.cached(fleet) {
            Some(index) => Ok(index),
            None => self.reload(fleet).await,
        }
    }

    /// Reads the fleet's geofences from the store again.
    pub async fn reload(&self, fleet: &str) -> Result<Arc<FleetIndex>, StoreError> {
        let set = self.store.geofences(fleet).await?;
        metrics::counter!(names::GEOFENCE_RELOADS).increment(1);
        Ok(self.install(fleet, set))
    }

    /// Builds and keeps the index of a set read from the store. The last
    /// read wins: should two reloads cross, the store refuses writes
    /// tested against the older and the next reload fixes it.
    fn install(&self, fleet: &str, set: FenceSet) -> Arc<FleetIndex> {
        let fences = set
            .features
            .iter()
            .filter_map(|(id, json)| {
                let parsed = serde_json::from_str::<Value>(json)
                    .map_err(|e| ShapeError { field: "stored".into(), reason: e.to_string() })
                    .and_then(|v| shape::parse_stored(id, &v));
                match parsed {
                    Ok(p) => Some((id.clone(), p.shape)),
                    Err(e) => {
                        tracing::warn!(fleet, geofence = %id, error = %e, "stored geofence unreadable, skipped");
                        None
                    }
                }
            })
            .collect();
        let index = Arc::new(FleetIndex::new(set.version, fences));
        let mut fleets = self.fleets.write_or_recover();
        fleets.insert(fleet.to_owned(), Indexed::new(index.clone()));
        set_gauge(&fleets);
        index
    }

    /// The fleets indexed here, with their versions.
    pub fn loaded(&self) -> Vec<(String, u64)> {
        self.fleets.read_or_recover().iter().map(|(f, i)| (f.clone(), i.index.version)).collect()
    }

    /// Drops the indexes no position has used since `before_ms`; the next
    /// position of such a fleet reads its geofences again. How many went.
    pub fn drop_idle(&self, before_ms: i64) -> usize {
        let mut fleets = self.fleets.write_or_recover();
        let had = fleets.len();
        fleets.retain(|_, i| i.used_ms.load(Ordering::Relaxed) >= before_ms);
        set_gauge(&fleets);
        had - fleets.len()
    }

    /// Validates and stores a geofence; whether it was new.
    pub async fn put(&self, fleet: &str, id: &str, body: &Value) -> Result<bool, GeofenceError> {
        // The topology checks take long for large rings: off the async
        // workers, so other clients are not kept waiting meanwhile.
        let (owned_id, owned_body, max) = (id.to_owned(), body.clone(), self.max_vertices);
        let parsed = tokio::task::spawn_blocking(move || shape::parse(&owned_id, &owned_body, max))
            .await
            .map_err(|_| StoreError::Corrupt("geofence validation did not finish".into()))??;
        let json = parsed.feature.to_string();
        match self.store.put_geofence(fleet, id, &json, self.max_per_fleet).await? {
            FenceWrite::Full => Err(GeofenceError::Full(self.max_per_fleet)),
            FenceWrite::Stored { created, version } => {
                if !self.apply(fleet, version, id, parsed.shape) {
                    self.refresh(fleet).await;
                }
                Ok(created)
            }
        }
    }

    /// Brings this replica's index to `version` with the one geofence just
    /// written, when it was at the version right before (or is already
    /// past it); otherwise (another write came between) only a reload
    /// can. Reloading the whole set after every write made creating a
    /// fleet's geofences one by one quadratic.
    fn apply(&self, fleet: &str, version: u64, id: &str, shape: Shape) -> bool {
        let mut fleets = self.fleets.write_or_recover();
        let Some(cached) = fleets.get(fleet) else { return false };
        if cached.index.version >= version {
            return true;
        }
        if cached.index.version + 1 != version {
            return false;
        }
        let index = Arc::new(cached.index.with(version, id, shape));
        fleets.insert(fleet.to_owned(), Indexed::new(index));
        set_gauge(&fleets);
        true
    }

    pub async fn delete(&self, fleet: &str, id: &str) -> Result<(), GeofenceError> {
        if !self.store.delete_geofence(fleet, id).await? {
            return Err(GeofenceError::NotFound);
        }
        self.refresh(fleet).await;
        Ok(())
    }

    /// After a write here: this replica's index follows at once (the
    /// others within a sync period, or at their next write).
    async fn refresh(&self, fleet: &str) {
        if let Err(e) = self.reload(fleet).await {
            tracing::debug!(error = %e, fleet, "geofences not reloaded after a write; the sync retries");
        }
    }

    /// The fleet's geofences as stored (Features, sorted by id).
    pub async fn list(&self, fleet: &str) -> Result<Vec<Value>, GeofenceError> {
        let mut set = self.store.geofences(fleet).await?;
        set.features.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(set.features.iter().filter_map(|(_, json)| serde_json::from_str(json).ok()).collect())
    }

    /// One geofence's Feature and who is inside it now.
    pub async fn get(&self, fleet: &str, id: &str) -> Result<(Value, Vec<String>), GeofenceError> {
        let (json, inside) = self.store.geofence(fleet, id).await?.ok_or(GeofenceError::NotFound)?;
        let feature = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok((feature, inside))
    }
}

/// The geofences gauge: every indexed fleet's count.
fn set_gauge(fleets: &HashMap<String, Indexed>) {
    metrics::gauge!(names::GEOFENCES).set(fleets.values().map(|f| f.index.len()).sum::<usize>() as f64);
}
