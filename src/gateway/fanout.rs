//! Local delivery of accepted positions to the sockets of this replica
//! that watch them: the fleet room, the vehicle's room and the boxes that
//! contain the position, each socket once, with the event encoded once.
//!
//! Box subscriptions live in a per-fleet grid (see [`crate::geo`]); a socket
//! that holds boxes also sits in a room named by its id, so the matching
//! sockets of all three kinds go out in one deduplicated local broadcast.
//!
//! With conflation on (`FLEETGATE_BATCH_MS` > 0) positions wait in a
//! per-fleet map that keeps the newest per vehicle, and each window ends
//! with one `locations` event per subscriber: one shared batch for the
//! fleet's whole-fleet watchers, and a tailored one for each socket that
//! watches only some vehicles or boxes.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::{SocketIo, adapter::Adapter, socket::Sid};

use crate::{
    error::ApiError,
    geo::{self, BBox, Cell},
    relay::Relay,
};

pub const NAMESPACE: &str = "/fleet";

/// Room of a fleet's whole-fleet watchers. `/` is outside the id grammar,
/// so no fleet/vehicle pair can spell another pair's room.
pub fn fleet_room(fleet: &str) -> String {
    format!("f/{fleet}")
}

pub fn vehicle_room(fleet: &str, vehicle: &str) -> String {
    format!("v/{fleet}/{vehicle}")
}

/// The room every socket with a box subscription joins: its own id.
pub fn socket_room(sid: Sid) -> String {
    sid.to_string()
}

type Grid = HashMap<Cell, Vec<(Sid, BBox)>>;

/// An accepted position on its way to local sockets, encoded once.
pub struct Outgoing {
    pub fleet: String,
    pub vehicle: String,
    pub lon: f64,
    pub lat: f64,
    pub ts: i64,
    pub encoded: Box<RawValue>,
    /// When the accepting replica received it.
    pub received_at: i64,
    /// Whether it was accepted on another replica.
    pub relayed: bool,
}

impl Outgoing {
    fn record_lag(&self) {
        let path = if self.relayed { "relay" } else { "local" };
        let lag = (crate::ids::now_ms() - self.received_at).max(0) as f64 / 1000.0;
        metrics::histogram!("fleetgate_delivery_lag_seconds", "path" => path).record(lag);
    }
}

/// The `locations` event of a conflation window.
#[derive(Serialize)]
struct Batch<'a> {
    fleet: &'a str,
    items: Vec<&'a RawValue>,
}

/// Positions waiting for the end of the window: fleet → vehicle → newest.
type Pending = HashMap<String, HashMap<String, Outgoing>>;

pub struct Fanout<A: Adapter> {
    io: SocketIo<A>,
    boxes: RwLock<HashMap<String, Grid>>,
    relay: Option<Relay>,
    /// `Some` when conflation is on.
    pending: Option<Mutex<Pending>>,
}

impl<A: Adapter> Fanout<A> {
    pub fn new(io: SocketIo<A>, relay: Option<Relay>, conflate: bool) -> Self {
        Self { io, boxes: RwLock::new(HashMap::new()), relay, pending: conflate.then(|| Mutex::new(HashMap::new())) }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Grid>> {
        self.boxes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Grid>> {
        self.boxes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The rooms of every local socket that watches this position: the
    /// fleet's, the vehicle's, and the own rooms of sockets whose box holds it.
    fn rooms_for(&self, fleet: &str, vehicle: &str, lon: f64, lat: f64) -> Vec<Cow<'static, str>> {
        let mut rooms: Vec<Cow<'static, str>> = vec![fleet_room(fleet).into(), vehicle_room(fleet, vehicle).into()];
        if let Some(grid) = self.read().get(fleet) {
            for cell in geo::point_cells(lon, lat) {
                if let Some(entries) = grid.get(&cell) {
                    rooms.extend(
                        entries.iter().filter(|(_, b)| b.contains(lon, lat)).map(|(sid, _)| socket_room(*sid).into()),
                    );
                }
            }
        }
        rooms
    }

    /// Sends an accepted position to every local socket that watches it,
    /// now, or at the end of the window when conflating.
    pub async fn deliver(&self, p: Outgoing) {
        if let Some(pending) = &self.pending {
            let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
            let fleet = pending.entry(p.fleet.clone()).or_default();
            match fleet.get(&p.vehicle) {
                Some(current) if current.ts >= p.ts => {}
                _ => {
                    fleet.insert(p.vehicle.clone(), p);
                }
            }
            return;
        }
        let rooms = self.rooms_for(&p.fleet, &p.vehicle, p.lon, p.lat);
        let Some(ns) = self.io.of(NAMESPACE) else { return };
        // Counting the receivers walks the same rooms the broadcast walks;
        // it is the only way to know how many sockets a deduplicated
        // broadcast reached.
        let receivers = ns.clone().local().to(rooms.clone()).sockets().len();
        metrics::counter!("fleetgate_broadcasts_total").increment(1);
        metrics::counter!("fleetgate_deliveries_total").increment(receivers as u64);
        if receivers == 0 {
            return;
        }
        if let Err(e) = ns.local().to(rooms).emit("locationupdate", &*p.encoded).await {
            // Per-socket failures: full buffers of slow clients, or sockets closing.
            metrics::counter!("fleetgate_emits_dropped_total").increment(1);
            tracing::debug!(error = %e, "some deliveries failed");
        }
        p.record_lag();
    }

    /// Ends a conflation window: one `locations` event per watching socket.
    pub async fn flush(&self) {
        let Some(pending) = &self.pending else { return };
        let fleets = std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
        let Some(ns) = self.io.of(NAMESPACE) else { return };
        for (fleet, vehicles) in fleets {
            let all = Batch { fleet: &fleet, items: vehicles.values().map(|p| &*p.encoded).collect() };
            let froom = fleet_room(&fleet);
            let whole = ns.clone().local().to(froom.clone()).sockets().len();
            if whole > 0 {
                metrics::counter!("fleetgate_deliveries_total").increment((whole * all.items.len()) as u64);
                if let Err(e) = ns.clone().local().to(froom.clone()).emit("locations", &all).await {
                    metrics::counter!("fleetgate_emits_dropped_total").increment(1);
                    tracing::debug!(error = %e, "some batches failed");
                }
            }
            // Sockets that watch only some vehicles or boxes get their own share.
            let mut partial: HashMap<Sid, (socketioxide::extract::SocketRef<A>, Vec<&RawValue>)> = HashMap::new();
            for p in vehicles.values() {
                let rooms = self.rooms_for(&fleet, &p.vehicle, p.lon, p.lat);
                for socket in ns.clone().local().to(rooms).except(froom.clone()).sockets() {
                    partial.entry(socket.id).or_insert_with(|| (socket, Vec::new())).1.push(&p.encoded);
                }
            }
            for (socket, items) in partial.into_values() {
                metrics::counter!("fleetgate_deliveries_total").increment(items.len() as u64);
                if socket.emit("locations", &Batch { fleet: &fleet, items }).is_err() {
                    metrics::counter!("fleetgate_emits_dropped_total").increment(1);
                }
            }
            metrics::counter!("fleetgate_broadcasts_total").increment(vehicles.len() as u64);
            vehicles.values().for_each(Outgoing::record_lag);
        }
    }

    pub fn add_box(&self, fleet: &str, sid: Sid, bbox: BBox) {
        let mut fleets = self.write();
        let grid = fleets.entry(fleet.to_owned()).or_default();
        for cell in bbox.cells() {
            grid.entry(cell).or_default().push((sid, bbox));
        }
    }

    pub fn remove_box(&self, fleet: &str, sid: Sid, bbox: BBox) {
        let mut fleets = self.write();
        let Some(grid) = fleets.get_mut(fleet) else { return };
        for cell in bbox.cells() {
            if let Some(entries) = grid.get_mut(&cell) {
                if let Some(i) = entries.iter().position(|(s, b)| *s == sid && *b == bbox) {
                    entries.swap_remove(i);
                }
                if entries.is_empty() {
                    grid.remove(&cell);
                }
            }
        }
        if grid.is_empty() {
            fleets.remove(fleet);
        }
    }

    /// Starts receiving the fleet's positions from other replicas.
    pub async fn watch(&self, fleet: &str) -> Result<(), ApiError> {
        let Some(relay) = &self.relay else { return Ok(()) };
        relay.watch(fleet).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot subscribe to the fleet's positions");
            ApiError::unavailable()
        })
    }

    pub async fn unwatch(&self, fleet: &str) {
        if let Some(relay) = &self.relay {
            relay.unwatch(fleet).await;
        }
    }

    pub fn relay(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }
}

/// Ends a conflation window every `every` until the process stops.
pub async fn run_conflation<A: Adapter>(fanout: std::sync::Arc<super::Gateway<A>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        fanout.fanout.flush().await;
    }
}
