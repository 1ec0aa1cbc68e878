//! Vehicle presence (section 5.4): `vehicle_online` when a vehicle's first
//! socket anywhere starts a session, `vehicle_offline` when its last one is
//! gone or it went quiet for `FLEETGATE_STALE_AFTER_SECS`.
//!
//! Each replica counts only its own vehicle sockets and tells the store
//! when a vehicle's first one arrives or last one leaves; the store decides
//! (atomically, across replicas) whether that changes the vehicle's state.
//! Replicas refresh their claims periodically, so the vehicles of a replica
//! that dies lapse to offline after `FLEETGATE_PRESENCE_TTL_SECS`; every
//! replica sweeps, and each offline vehicle is announced by exactly one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use socketioxide::adapter::Adapter;

use super::{
    Gateway,
    fanout::{NAMESPACE, fleet_room, vehicle_room},
};
use crate::{
    ids,
    metrics::{AdapterOp, PresenceState, names},
    store::Offline,
};

const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// This replica's vehicle sockets, by (fleet, vehicle).
#[derive(Default)]
pub struct LocalVehicles {
    counts: Mutex<HashMap<(String, String), usize>>,
}

impl LocalVehicles {
    /// Counts a socket in; whether it is the vehicle's first here.
    fn add(&self, key: &(String, String)) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Counts a socket out; whether it was the vehicle's last here.
    fn remove(&self, key: &(String, String)) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get_mut(key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                counts.remove(key);
                true
            }
            None => false,
        }
    }

    /// How many vehicles have a socket here.
    pub fn count(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn snapshot(&self) -> Vec<(String, String)> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Online<'a> {
    fleet: &'a str,
    vehicle_id: &'a str,
    ts: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OfflineEvent<'a> {
    fleet: &'a str,
    vehicle_id: &'a str,
    last_seen: i64,
}

impl<A: Adapter> Gateway<A> {
    /// A vehicle session started on a socket of this replica.
    ///
    /// The socket is counted in before this returns, so a sibling socket
    /// that closes right after (a client moving to a new connection with
    /// its session) never sees itself as the vehicle's last one; only the
    /// store's part runs in the background.
    pub(super) fn vehicle_socket_opened(self: &Arc<Self>, fleet: &str, vehicle: &str) {
        let key = (fleet.to_owned(), vehicle.to_owned());
        if !self.local_vehicles.add(&key) {
            return;
        }
        let gw = self.clone();
        tokio::spawn(async move {
            let (fleet, vehicle) = &key;
            match gw.store.vehicle_connected(fleet, vehicle, &gw.node_id).await {
                Ok(true) => gw.announce_online(fleet, vehicle).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "presence not recorded"),
            }
        });
    }

    /// A socket with a vehicle session closed on this replica.
    pub(super) async fn vehicle_socket_closed(&self, fleet: &str, vehicle: &str) {
        let key = (fleet.to_owned(), vehicle.to_owned());
        if !self.local_vehicles.remove(&key) {
            return;
        }
        match self.store.vehicle_disconnected(fleet, vehicle, &self.node_id).await {
            Ok(Some(last_seen)) => {
                self.announce_offline(&Offline { fleet: key.0, vehicle: key.1, last_seen }).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "presence not updated; the sweep will catch up"),
        }
    }

    pub(super) async fn announce_online(&self, fleet: &str, vehicle: &str) {
        metrics::counter!(names::PRESENCE_CHANGES, "state" => PresenceState::Online).increment(1);
        let event = Online { fleet, vehicle_id: vehicle, ts: ids::now_ms() };
        self.emit_presence(fleet, vehicle, "vehicle_online", &event).await;
    }

    async fn announce_offline(&self, o: &Offline) {
        metrics::counter!(names::PRESENCE_CHANGES, "state" => PresenceState::Offline).increment(1);
        let event = OfflineEvent { fleet: &o.fleet, vehicle_id: &o.vehicle, last_seen: o.last_seen };
        self.emit_presence(&o.fleet, &o.vehicle, "vehicle_offline", &event).await;
    }

    /// To the fleet's and the vehicle's subscribers on every replica.
    async fn emit_presence<T: Serialize>(&self, fleet: &str, vehicle: &str, event: &str, payload: &T) {
        let Some(ns) = self.io.of(NAMESPACE) else { return };
        if let Err(e) = ns.to(vec![fleet_room(fleet), vehicle_room(fleet, vehicle)]).emit(event, payload).await {
            super::adapter_failed(AdapterOp::Presence, &e);
        }
    }
}

/// Refreshes this replica's claims and announces vehicles that went offline.
pub async fn run<A: Adapter>(gateway: Arc<Gateway<A>>) {
    let refresh_every = Duration::from_millis((gateway.config.presence_ttl_secs.saturating_mul(1000) / 3).max(200));
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut refresh = tokio::time::interval(refresh_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                let vehicles = gateway.local_vehicles.snapshot();
                if let Err(e) = gateway.store.refresh_presence(&gateway.node_id, &vehicles).await {
                    tracing::warn!(error = %e, "presence refresh failed");
                }
            }
            _ = sweep.tick() => match gateway.store.sweep_presence().await {
                Ok(gone) => {
                    for o in gone {
                        gateway.announce_offline(&o).await;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "presence sweep failed"),
            },
        }
    }
}
