//! Viewers that do not keep up. A socket whose send buffer is full is
//! *lagging*: from then on it keeps only the newest position of each
//! vehicle it watches (latest-value conflation), and a sweep every
//! [`SWEEP`] hands those over as its buffer drains. A viewer still lagging
//! after `FLEETGATE_SLOW_VIEWER_SECS`, or whose backlog outgrows
//! [`MAX_BACKLOG`], is *expelled*: it gets nothing more, and is
//! disconnected as soon as its buffer has room for the disconnect packet.
//! One that reads nothing at all never makes that room; its buffer being
//! full, Engine.IO cannot queue the next ping and closes the connection at
//! the next heartbeat. Memory per stalled viewer is thereby bounded, and
//! nobody else waits for it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::{
    SendError, SocketError,
    adapter::Adapter,
    extract::SocketRef,
    socket::{EncodedEvent, Sid},
};

use super::Outgoing;
use crate::lock::MutexExt;
use crate::metrics::names;

/// How often lagging sockets are offered their backlog.
const SWEEP: Duration = Duration::from_millis(100);

/// Vehicles a lagging socket may have pending before it is disconnected.
const MAX_BACKLOG: usize = 10_000;

/// The `locations` event of a conflation window (section 5.2).
#[derive(Serialize)]
pub(crate) struct Batch<'a> {
    pub fleet: &'a str,
    pub items: Vec<&'a RawValue>,
}

struct Lag<A: Adapter> {
    socket: SocketRef<A>,
    since: Instant,
    fleet: String,
    /// Vehicle → its newest position not yet sent.
    backlog: HashMap<String, Arc<Outgoing>>,
    /// Gets nothing more; disconnected once that can be sent.
    expelled: bool,
    /// Its events carry offsets (it recovers).
    offsets: bool,
}

impl<A: Adapter> Lag<A> {
    fn keep(&mut self, p: &Arc<Outgoing>) {
        if self.expelled {
            return dropped(1);
        }
        match self.backlog.get(&p.vehicle) {
            Some(current) if current.ts >= p.ts => dropped(1),
            Some(_) => {
                dropped(1);
                self.backlog.insert(p.vehicle.clone(), p.clone());
            }
            None => {
                self.backlog.insert(p.vehicle.clone(), p.clone());
            }
        }
    }
}

/// The offset of a `locations` batch: its newest item's.
pub(super) fn batch_offset<'a>(items: impl Iterator<Item = &'a Arc<Outgoing>>) -> String {
    let newest = items.map(|p| p.received_at).max().unwrap_or(0);
    crate::store::recovery::LogId::position(newest).to_string()
}

fn dropped(n: usize) {
    metrics::counter!(names::EMITS_DROPPED).increment(n as u64);
}

fn is_full(e: &SendError) -> bool {
    matches!(e, SendError::Socket(SocketError::InternalChannelFull))
}

pub(super) struct SlowViewers<A: Adapter> {
    lagging: Mutex<HashMap<Sid, Lag<A>>>,
    /// `lagging.len()`, read without the lock on every delivery.
    count: AtomicUsize,
    timeout: Duration,
    /// Whether backlogs go out as one `locations` batch (conflation on).
    batches: bool,
}

impl<A: Adapter> SlowViewers<A> {
    pub fn new(timeout: Duration, batches: bool) -> Self {
        Self { lagging: Mutex::new(HashMap::new()), count: AtomicUsize::new(0), timeout, batches }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Sid, Lag<A>>> {
        self.lagging.lock_or_recover()
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Adds to the socket's backlog if it lags. Whether it did.
    fn kept(&self, sid: Sid, items: &[&Arc<Outgoing>]) -> bool {
        if self.count() == 0 {
            return false;
        }
        match self.lock().get_mut(&sid) {
            Some(lag) => {
                items.iter().for_each(|p| lag.keep(p));
                true
            }
            None => false,
        }
    }

    fn start(&self, socket: &SocketRef<A>, items: &[&Arc<Outgoing>], offsets: bool) {
        let Some(first) = items.first() else { return };
        let mut lagging = self.lock();
        let lag = lagging.entry(socket.id).or_insert_with(|| {
            metrics::counter!(names::SLOW_VIEWERS).increment(1);
            tracing::debug!(sid = %socket.id, "viewer lagging");
            Lag {
                socket: socket.clone(),
                since: Instant::now(),
                fleet: first.fleet.clone(),
                backlog: HashMap::new(),
                expelled: false,
                offsets,
            }
        });
        items.iter().for_each(|p| lag.keep(p));
        self.count.store(lagging.len(), Ordering::Relaxed);
    }

    /// Sends one `locationupdate`, or keeps it when the socket lags.
    /// Whether it went out now.
    pub fn offer(&self, socket: &SocketRef<A>, p: &Arc<Outgoing>, offsets: bool) -> bool {
        if self.kept(socket.id, &[p]) {
            return false;
        }
        let Some(wire) = p.wire(socket, offsets) else { return false };
        match socket.emit_encoded(wire) {
            Ok(()) => true,
            Err(e) if is_full(&e) => {
                self.start(socket, &[p], offsets);
                false
            }
            // Closing: its disconnect handler cleans up.
            Err(_) => false,
        }
    }

    /// Sends a window's `locations` batch (already encoded), or keeps its
    /// items when the socket lags. How many positions went out now.
    pub fn offer_batch(
        &self,
        socket: &SocketRef<A>,
        items: &[&Arc<Outgoing>],
        encoded: &EncodedEvent,
        offsets: bool,
    ) -> usize {
        if self.kept(socket.id, items) {
            return 0;
        }
        match socket.emit_encoded(encoded) {
            Ok(()) => items.len(),
            Err(e) if is_full(&e) => {
                self.start(socket, items, offsets);
                0
            }
            Err(_) => 0,
        }
    }

    pub fn forget(&self, sid: Sid) {
        if self.count() == 0 {
            return;
        }
        let mut lagging = self.lock();
        if lagging.remove(&sid).is_some() {
            self.count.store(lagging.len(), Ordering::Relaxed);
        }
    }

    /// Offers every lagging socket its backlog; ends the lag of those that
    /// took all of it and returns the expelled, to disconnect.
    fn sweep(&self) -> Vec<SocketRef<A>> {
        let mut expel = Vec::new();
        let mut lagging = self.lock();
        let mut delivered = 0u64;
        lagging.retain(|_, lag| {
            if !lag.socket.connected() {
                return false;
            }
            if !lag.expelled && (lag.since.elapsed() > self.timeout || lag.backlog.len() > MAX_BACKLOG) {
                dropped(lag.backlog.len());
                lag.backlog.clear();
                lag.expelled = true;
                metrics::counter!(names::SLOW_VIEWERS_EXPELLED).increment(1);
                tracing::info!(sid = %lag.socket.id, "disconnecting a viewer that does not keep up");
            }
            if lag.expelled {
                expel.push(lag.socket.clone());
                return true;
            }
            let mut items: Vec<Arc<Outgoing>> = lag.backlog.drain().map(|(_, p)| p).collect();
            // Oldest first, so each vehicle's newest fix is what a client sees last.
            items.sort_unstable_by_key(|p| p.ts);
            let sent = if self.batches {
                let batch = Batch { fleet: &lag.fleet, items: items.iter().map(|p| &*p.encoded).collect() };
                let offset = batch_offset(items.iter());
                let sent = serde_json::value::to_raw_value(&batch).map(|b| {
                    if lag.offsets {
                        lag.socket.emit("locations", &(&*b, offset))
                    } else {
                        lag.socket.emit("locations", &*b)
                    }
                });
                match sent {
                    Ok(Ok(())) => items.len(),
                    _ => 0,
                }
            } else {
                items
                    .iter()
                    .take_while(|p| {
                        p.wire(&lag.socket, lag.offsets).is_some_and(|w| lag.socket.emit_encoded(w).is_ok())
                    })
                    .count()
            };
            delivered += sent as u64;
            for p in items.drain(sent..) {
                lag.backlog.insert(p.vehicle.clone(), p);
            }
            !lag.backlog.is_empty()
        });
        self.count.store(lagging.len(), Ordering::Relaxed);
        metrics::counter!(names::DELIVERIES).increment(delivered);
        expel
    }
}

/// Sweeps lagging sockets until the process stops.
pub(super) async fn run_sweep<A: Adapter>(gw: Arc<crate::gateway::Gateway<A>>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if gw.fanout.slow.count() == 0 {
            continue;
        }
        // Outside the lock: disconnecting runs the socket's disconnect handler.
        for socket in gw.fanout.slow.sweep() {
            let sid = socket.id;
            // Refused while its buffer is full: tried again at the next sweep.
            if socket.disconnect().is_ok() {
                metrics::counter!(names::SLOW_VIEWERS_DISCONNECTED).increment(1);
                gw.fanout.slow.forget(sid);
            }
        }
    }
}
