//! Conflation (`FLEETGATE_BATCH_MS` > 0): positions wait in a per-fleet map
//! that keeps the newest per vehicle, and each window ends with one
//! `locations` event per subscriber: one shared batch, encoded once, for the
//! fleet's whole-fleet watchers, and a tailored one for each socket that
//! watches only some vehicles or boxes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use socketioxide::{
    adapter::Adapter,
    extract::SocketRef,
    socket::{EncodedEvent, Sid},
};

use super::{Fanout, Mode, Outgoing, fleet_room, slow::Batch};
use crate::lock::MutexExt;
use crate::metrics::names;

/// Positions waiting for the end of the window: fleet → vehicle → newest.
pub(super) type Pending = HashMap<String, HashMap<String, Arc<Outgoing>>>;

pub(super) fn add(pending: &Mutex<Pending>, p: Outgoing) {
    let mut pending = pending.lock_or_recover();
    let fleet = pending.entry(p.fleet.clone()).or_default();
    match fleet.get(&p.vehicle) {
        Some(current) if current.ts >= p.ts => {}
        _ => {
            fleet.insert(p.vehicle.clone(), Arc::new(p));
        }
    }
}

/// The `locations` packet of a window's items, encoded once (on `socket`)
/// for every socket that gets the same items.
fn encode<A: Adapter>(
    socket: &SocketRef<A>,
    fleet: &str,
    items: &[&Arc<Outgoing>],
    offsets: bool,
) -> Option<EncodedEvent> {
    let batch = Batch { fleet, items: items.iter().map(|p| &*p.encoded).collect() };
    if offsets {
        socket.encode_event("locations", &(&batch, super::slow::batch_offset(items.iter().copied()))).ok()
    } else {
        socket.encode_event("locations", &batch).ok()
    }
}

impl<A: Adapter> Fanout<A> {
    /// Ends a conflation window: one `locations` event per watching socket.
    fn flush(&self) {
        let Mode::Conflate(pending) = &self.mode else { return };
        let fleets = std::mem::take(&mut *pending.lock_or_recover());
        let Some(ns) = self.ns() else { return };
        let mut delivered = 0usize;
        for (fleet, vehicles) in fleets {
            let all: Vec<&Arc<Outgoing>> = vehicles.values().collect();
            let froom = fleet_room(&fleet);
            let whole = ns.clone().local().to(froom.clone()).sockets();
            // Encoded at most twice: as is, and with its offset for sockets that recover.
            let (mut plain, mut with_offset) = (None, None);
            for socket in &whole {
                let offsets = self.recovering.wants_offsets(socket.id);
                let cell = if offsets { &mut with_offset } else { &mut plain };
                if cell.is_none() {
                    *cell = encode(socket, &fleet, &all, offsets);
                }
                if let Some(encoded) = cell.as_ref() {
                    delivered += self.slow.offer_batch(socket, &all, encoded, offsets);
                }
            }
            // Sockets that watch only some vehicles or boxes get their own share.
            let mut partial: HashMap<Sid, (SocketRef<A>, Vec<&Arc<Outgoing>>)> = HashMap::new();
            for p in &all {
                let rooms = self.rooms_for(&fleet, &p.vehicle, p.lon, p.lat);
                for socket in ns.clone().local().to(rooms).except(froom.clone()).sockets() {
                    partial.entry(socket.id).or_insert_with(|| (socket, Vec::new())).1.push(p);
                }
            }
            for (socket, items) in partial.into_values() {
                let offsets = self.recovering.wants_offsets(socket.id);
                if let Some(encoded) = encode(&socket, &fleet, &items, offsets) {
                    delivered += self.slow.offer_batch(&socket, &items, &encoded, offsets);
                }
            }
            metrics::counter!(names::BROADCASTS).increment(all.len() as u64);
            all.iter().for_each(|p| p.record_lag());
        }
        metrics::counter!(names::DELIVERIES).increment(delivered as u64);
    }
}

/// Ends a conflation window every `every` until the process stops.
pub async fn run_conflation<A: Adapter>(gw: Arc<crate::gateway::Gateway<A>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        gw.fanout.flush();
    }
}
