//! Local delivery of accepted positions to the sockets of this replica
//! that watch them: the fleet room, the vehicle's room and the boxes that
//! contain the position, each socket once, with the event encoded once.
//!
//! Box subscriptions live in a per-fleet grid (see [`crate::geo`]); a socket
//! that holds boxes also sits in a room named by its id, so the matching
//! sockets of all three kinds go out in one deduplicated local broadcast.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
};

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

pub struct Fanout<A: Adapter> {
    io: SocketIo<A>,
    boxes: RwLock<HashMap<String, Grid>>,
    relay: Option<Relay>,
}

impl<A: Adapter> Fanout<A> {
    pub fn new(io: SocketIo<A>, relay: Option<Relay>) -> Self {
        Self { io, boxes: RwLock::new(HashMap::new()), relay }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Grid>> {
        self.boxes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Grid>> {
        self.boxes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one encoded position to every local socket that watches it.
    pub async fn deliver(&self, fleet: &str, vehicle: &str, lon: f64, lat: f64, event: &str, encoded: &RawValue) {
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
        if let Err(e) = ns.local().to(rooms).emit(event, encoded).await {
            // Per-socket failures: full buffers of slow clients, or sockets closing.
            metrics::counter!("fleetgate_emits_dropped_total").increment(1);
            tracing::debug!(error = %e, "some deliveries failed");
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
