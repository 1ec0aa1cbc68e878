//! Local delivery of accepted positions to the sockets of this replica
//! that watch them: the fleet room, the vehicle's room and the boxes that
//! contain the position, each socket once, with the event encoded once.
//!
//! Box subscriptions live in a per-fleet grid (see [`crate::geo`]); a socket
//! that holds boxes also sits in a room named by its id, so the matching
//! sockets of all three kinds come out of one deduplicated room lookup.
//!
//! Positions reach sockets through a few fan-out tasks (one per worker
//! thread, a fleet always on the same one) fed by bounded queues of
//! rounds: the positions one store call accepted, or one message from
//! another replica, travel together. A task takes everything queued at once
//! and hands it to the sockets. Each
//! position is encoded once into the Socket.IO packet its viewers receive
//! (`Outgoing::wire`); handing it to a socket is a reference-count
//! increment and a push onto the socket's queue. The websocket connection
//! (`vendor/engineioxide`) then coalesces by `FLEETGATE_WRITE_WINDOW_MS`
//! (contract section 9): what reaches a socket within a window of its last
//! write leaves together, in one write, at the end of that window.
//!
//! With conflation on (`FLEETGATE_BATCH_MS` > 0) positions wait in a
//! per-fleet map that keeps the newest per vehicle (see `conflate`).
//!
//! Geofence crossings (section 11) ride on the position that made them
//! (`Outgoing::crossings`): each becomes one `geofence` event, encoded
//! once, for the position's watchers plus the sockets subscribed to that
//! geofence, each socket once, right after the position itself (with
//! conflation on, at once: before the window's `locations`).

mod conflate;
mod slow;

use std::{
    borrow::Cow,
    collections::HashMap,
    hash::BuildHasher,
    sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use serde_json::value::RawValue;
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::SocketRef,
    socket::{EncodedEvent, Sid},
};
use tokio::sync::mpsc;

pub use conflate::run_conflation;
use slow::SlowViewers;

use crate::lock::{MutexExt, RwLockExt};
use crate::{
    error::ApiError,
    geo::{self, BBox, Cell},
    metrics::{DeliveryPath, names},
    replication::Relay,
};

pub const NAMESPACE: &str = "/fleet";

/// Rounds waiting for a fan-out task before publishers wait too: the
/// queue is bounded so a stalled fan-out slows intake instead of growing
/// memory, and nothing accepted is dropped on the way. A round holds at
/// most one batch ([`crate::gateway::publish::MAX_BATCH`] positions).
const QUEUE: usize = 1_024;

/// The most rounds one fan-out task takes from its queue at once.
const ROUNDS: usize = 256;

/// Room of a fleet's whole-fleet watchers. `/` is outside the id grammar,
/// so no fleet/vehicle pair can spell another pair's room.
pub fn fleet_room(fleet: &str) -> String {
    format!("f/{fleet}")
}

pub fn vehicle_room(fleet: &str, vehicle: &str) -> String {
    format!("v/{fleet}/{vehicle}")
}

/// Room of the sockets subscribed to a geofence's events (section 11).
pub fn geofence_room(fleet: &str, geofence: &str) -> String {
    format!("g/{fleet}/{geofence}")
}

/// Room of a scoped viewer subscribed to a geofence: one per vehicle of
/// its scope, so it hears only its own vehicles' crossings.
pub fn scoped_geofence_room(fleet: &str, geofence: &str, vehicle: &str) -> String {
    format!("gv/{fleet}/{geofence}/{vehicle}")
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
    /// The `locationupdate` packet, encoded by the first socket that sends
    /// it and shared by all the others.
    pub wire: Wire,
    /// The geofences this position entered or left, in order.
    pub crossings: Vec<crate::geofence::Crossing>,
}

/// A position's `locationupdate` packet, encoded at most twice: as is, and
/// with its offset for the sockets that recover (section 10).
#[derive(Default)]
pub struct Wire {
    plain: std::sync::OnceLock<EncodedEvent>,
    with_offset: std::sync::OnceLock<EncodedEvent>,
}

/// The `locations` event of a conflation window, for recovery's replay too.
pub(crate) use slow::Batch as LocationsBatch;

impl Outgoing {
    /// The `locationupdate` packet of this position, encoded once (per
    /// form: `offsets` for sockets that recover).
    fn wire<A: Adapter>(&self, socket: &SocketRef<A>, offsets: bool) -> Option<&EncodedEvent> {
        let cell = if offsets { &self.wire.with_offset } else { &self.wire.plain };
        if let Some(wire) = cell.get() {
            return Some(wire);
        }
        let wire = if offsets {
            socket.encode_event("locationupdate", &(&*self.encoded, self.offset())).ok()?
        } else {
            socket.encode_event("locationupdate", &*self.encoded).ok()?
        };
        Some(cell.get_or_init(|| wire))
    }

    /// Its offset for recovering sockets.
    fn offset(&self) -> String {
        crate::store::recovery::LogId::position(self.received_at).to_string()
    }

    /// The `geofence` event (section 11) of one of its crossings.
    pub(crate) fn geofence_event<'a>(&'a self, c: &'a crate::geofence::Crossing) -> crate::geofence::GeofenceEvent<'a> {
        crate::geofence::GeofenceEvent {
            fleet: &self.fleet,
            vehicle_id: &self.vehicle,
            geofence: &c.geofence,
            kind: c.kind,
            ts: self.ts,
            lat: self.lat,
            lon: self.lon,
        }
    }

    /// The offset of its `index`th crossing.
    fn crossing_offset(&self, index: usize) -> String {
        crate::store::recovery::LogId::crossing(self.received_at, index).to_string()
    }

    fn record_lag(&self) {
        let path = if self.relayed { DeliveryPath::Relay } else { DeliveryPath::Local };
        let lag = (crate::clock::now_ms() - self.received_at).max(0) as f64 / 1000.0;
        metrics::histogram!(names::DELIVERY_LAG_SECONDS, "path" => path).record(lag);
    }
}

/// How accepted positions travel from `deliver` to the sockets.
enum Mode {
    /// One `locationupdate` per position, through the fan-out tasks' queues.
    Immediate {
        queues: Vec<mpsc::Sender<Vec<Arc<Outgoing>>>>,
        /// Taken by [`spawn`] when the tasks start.
        receivers: Mutex<Vec<mpsc::Receiver<Vec<Arc<Outgoing>>>>>,
    },
    /// One `locations` batch per window and socket.
    Conflate(Mutex<conflate::Pending>),
}

pub struct Fanout<A: Adapter> {
    io: SocketIo<A>,
    boxes: RwLock<HashMap<String, Grid>>,
    relay: Option<Relay>,
    mode: Mode,
    slow: SlowViewers<A>,
    hasher: std::collections::hash_map::RandomState,
    /// The local sockets whose events carry offsets (section 10).
    pub recovering: super::recovery::Registry,
}

/// How fan-out behaves, from configuration.
pub struct Settings {
    pub conflate: bool,
    /// Fan-out tasks (and queues).
    pub shards: usize,
    /// How long a viewer may lag before it is disconnected.
    pub slow_viewer_timeout: Duration,
}

impl<A: Adapter> Fanout<A> {
    /// The fleet namespace: `None` only before it is registered.
    pub(crate) fn ns(&self) -> Option<socketioxide::operators::BroadcastOperators<A>> {
        self.io.of(NAMESPACE)
    }

    pub fn new(io: SocketIo<A>, relay: Option<Relay>, settings: Settings) -> Self {
        let mode = if settings.conflate {
            Mode::Conflate(Mutex::new(HashMap::new()))
        } else {
            let (queues, receivers) = (0..settings.shards.max(1)).map(|_| mpsc::channel(QUEUE)).unzip();
            Mode::Immediate { queues, receivers: Mutex::new(receivers) }
        };
        Self {
            io,
            boxes: RwLock::new(HashMap::new()),
            relay,
            mode,
            slow: SlowViewers::new(settings.slow_viewer_timeout, settings.conflate),
            hasher: Default::default(),
            recovering: Default::default(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Grid>> {
        self.boxes.read_or_recover()
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Grid>> {
        self.boxes.write_or_recover()
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

    /// The local sockets that watch this position.
    fn watchers(&self, p: &Outgoing) -> Vec<SocketRef<A>> {
        let Some(ns) = self.ns() else { return Vec::new() };
        ns.local().to(self.rooms_for(&p.fleet, &p.vehicle, p.lon, p.lat)).sockets()
    }

    /// Sends a round of one fleet's accepted positions to every local
    /// socket that watches them: through the fan-out queue of its fleet, or
    /// at the end of the window when conflating. Waits only when that
    /// queue is full.
    pub async fn deliver_round(&self, round: Vec<Outgoing>) {
        let Some(first) = round.first() else { return };
        match &self.mode {
            Mode::Conflate(pending) => round.into_iter().for_each(|p| {
                self.send_crossings(&p);
                conflate::add(pending, p)
            }),
            Mode::Immediate { queues, .. } => {
                let queue = &queues[(self.hasher.hash_one(&first.fleet) % queues.len() as u64) as usize];
                let round: Vec<Arc<Outgoing>> = round.into_iter().map(Arc::new).collect();
                if let Err(mpsc::error::SendError(round)) = queue.send(round).await {
                    // No fan-out task (it has not started, or the process is stopping).
                    round.iter().for_each(|p| self.send_now(p));
                }
            }
        }
    }

    /// Writes one position to its watchers now.
    fn send_now(&self, p: &Arc<Outgoing>) {
        let sockets = self.watchers(p);
        metrics::counter!(names::BROADCASTS).increment(1);
        if sockets.is_empty() {
            // Geofence subscribers may still want its crossings.
            self.send_crossings(p);
            return;
        }
        let mut delivered = 0u64;
        for socket in &sockets {
            if self.slow.offer(socket, p, self.recovering.wants_offsets(socket.id)) {
                delivered += 1;
            }
        }
        metrics::counter!(names::DELIVERIES).increment(delivered);
        p.record_lag();
        self.send_crossings(p);
    }

    /// One `geofence` event per crossing of `p`, to the position's
    /// watchers and the geofence's subscribers, each socket once.
    fn send_crossings(&self, p: &Outgoing) {
        if p.crossings.is_empty() {
            return;
        }
        let Some(ns) = self.ns() else { return };
        let watching = self.rooms_for(&p.fleet, &p.vehicle, p.lon, p.lat);
        for (i, c) in p.crossings.iter().enumerate() {
            let mut rooms = watching.clone();
            rooms.push(geofence_room(&p.fleet, &c.geofence).into());
            rooms.push(scoped_geofence_room(&p.fleet, &c.geofence, &p.vehicle).into());
            let sockets = ns.clone().local().to(rooms).sockets();
            let Some(first) = sockets.first() else { continue };
            let event = p.geofence_event(c);
            // Encoded at most twice: as is, and with its offset (just after
            // its position's) for the sockets that recover.
            let (mut plain, mut with_offset) = (None, None);
            let (mut sent, mut dropped) = (0u64, 0u64);
            for socket in &sockets {
                let wire = if self.recovering.wants_offsets(socket.id) {
                    with_offset
                        .get_or_insert_with(|| first.encode_event("geofence", &(&event, p.crossing_offset(i))).ok())
                } else {
                    plain.get_or_insert_with(|| first.encode_event("geofence", &event).ok())
                };
                let Some(wire) = wire else { continue };
                match socket.emit_encoded(wire) {
                    Ok(()) => sent += 1,
                    Err(_) => dropped += 1,
                }
            }
            metrics::counter!(names::GEOFENCE_DELIVERIES).increment(sent);
            if dropped > 0 {
                metrics::counter!(names::GEOFENCE_EVENTS_DROPPED).increment(dropped);
            }
        }
    }

    /// Forgets what fan-out keeps for a socket that is gone.
    pub fn forget_socket(&self, sid: Sid) {
        self.slow.forget(sid);
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
    pub async fn hear_other_replicas(&self, fleet: &str) -> Result<(), ApiError> {
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

    /// Sockets lagging now, for the gauge.
    pub fn lagging(&self) -> usize {
        self.slow.count()
    }
}

/// Starts the fan-out tasks and the slow-viewer sweep; abort the handles to stop them.
pub fn spawn<A: Adapter>(gw: &Arc<super::Gateway<A>>) -> Vec<tokio::task::JoinHandle<()>> {
    let receivers = match &gw.fanout.mode {
        Mode::Immediate { receivers, .. } => std::mem::take(&mut *receivers.lock_or_recover()),
        Mode::Conflate(_) => Vec::new(),
    };
    let mut tasks: Vec<_> = receivers.into_iter().map(|rx| tokio::spawn(run_queue(gw.clone(), rx))).collect();
    tasks.push(tokio::spawn(slow::run_sweep(gw.clone())));
    tasks
}

async fn run_queue<A: Adapter>(gw: Arc<super::Gateway<A>>, mut rx: mpsc::Receiver<Vec<Arc<Outgoing>>>) {
    let mut rounds = Vec::with_capacity(ROUNDS);
    while rx.recv_many(&mut rounds, ROUNDS).await > 0 {
        for p in rounds.drain(..).flatten() {
            gw.fanout.send_now(&p);
        }
        // Let the connections write before the next round, so what queues
        // meanwhile leaves together.
        tokio::task::yield_now().await;
    }
}
