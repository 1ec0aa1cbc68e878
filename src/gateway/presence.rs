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
use tokio::sync::oneshot;

use super::{
    Gateway,
    fanout::{fleet_room, vehicle_room},
    recovery::{Audience, Target},
};
use crate::lock::MutexExt;
use crate::{
    clock,
    metrics::{AdapterOp, PresenceState, names},
    store::Offline,
};

const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// This replica's vehicle sockets, by (fleet, vehicle).
///
/// The store hears of a vehicle's first socket here in the background, so
/// its "last one left" can be sent before its "first one arrived" has
/// landed (a socket that resumes a session on this replica and is revoked
/// at once). The store would then keep a claim no socket holds, and the
/// vehicle would stay online until the claim lapses. So each vehicle's
/// presence changes are sent in turn: one waits for the previous one.
#[derive(Default)]
pub struct LocalVehicles {
    vehicles: Mutex<HashMap<(String, String), Vehicle>>,
}

/// A vehicle's sockets here and its presence changes still on their way to the store.
#[derive(Default)]
struct Vehicle {
    sockets: usize,
    turns: u64,
    last_turn: Option<oneshot::Receiver<()>>,
}

/// One presence change's place in its vehicle's order: it goes after
/// `after` and signals the next one by dropping `done`.
struct Turn {
    after: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
    number: u64,
}

impl Turn {
    async fn wait(&mut self) {
        if let Some(previous) = self.after.take() {
            // An error only means the previous change's task is gone: either way it is over.
            let _ = previous.await;
        }
    }
}

impl Vehicle {
    fn next_turn(&mut self) -> Turn {
        let (done, next) = oneshot::channel();
        self.turns += 1;
        Turn { after: self.last_turn.replace(next), done, number: self.turns }
    }
}

impl LocalVehicles {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Vehicle>> {
        self.vehicles.lock_or_recover()
    }

    /// Counts a socket in; the store's turn when it is the vehicle's first here.
    fn add(&self, key: &(String, String)) -> Option<Turn> {
        let mut vehicles = self.lock();
        let vehicle = vehicles.entry(key.clone()).or_default();
        vehicle.sockets += 1;
        (vehicle.sockets == 1).then(|| vehicle.next_turn())
    }

    /// Counts a socket out; the store's turn when it was the vehicle's last here.
    fn remove(&self, key: &(String, String)) -> Option<Turn> {
        let mut vehicles = self.lock();
        let vehicle = vehicles.get_mut(key).filter(|v| v.sockets > 0)?;
        vehicle.sockets -= 1;
        (vehicle.sockets == 0).then(|| vehicle.next_turn())
    }

    /// A presence change reached the store: the vehicle is forgotten when
    /// it has no socket here and nothing else is on its way.
    fn finish(&self, key: &(String, String), turn: Turn) {
        let mut vehicles = self.lock();
        if vehicles.get(key).is_some_and(|v| v.sockets == 0 && v.turns == turn.number) {
            vehicles.remove(key);
        }
        drop(turn.done);
    }

    /// How many vehicles have a socket here.
    pub fn count(&self) -> usize {
        self.lock().values().filter(|v| v.sockets > 0).count()
    }

    fn snapshot(&self) -> Vec<(String, String)> {
        self.lock().iter().filter(|(_, v)| v.sockets > 0).map(|(k, _)| k.clone()).collect()
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
        let Some(mut turn) = self.local_vehicles.add(&key) else { return };
        // Before any position from this socket can be accepted.
        let opened_at = clock::now_ms();
        let gw = self.clone();
        tokio::spawn(async move {
            turn.wait().await;
            let (fleet, vehicle) = &key;
            match gw.store.vehicle_connected(fleet, vehicle, &gw.node_id).await {
                Ok(true) => gw.announce_online(fleet, vehicle, opened_at).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "presence not recorded"),
            }
            gw.local_vehicles.finish(&key, turn);
        });
    }

    /// A socket with a vehicle session closed on this replica.
    pub(super) async fn vehicle_socket_closed(&self, fleet: &str, vehicle: &str) {
        let key = (fleet.to_owned(), vehicle.to_owned());
        let Some(mut turn) = self.local_vehicles.remove(&key) else { return };
        turn.wait().await;
        match self.store.vehicle_disconnected(fleet, vehicle, &self.node_id).await {
            Ok(Some(last_seen)) => {
                let offline = Offline { fleet: fleet.to_owned(), vehicle: vehicle.to_owned(), last_seen };
                self.announce_offline(&offline).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "presence not updated; the sweep will catch up"),
        }
        self.local_vehicles.finish(&key, turn);
    }

    /// `at_ms`: when the vehicle came online, the time its event is
    /// ordered on for recovery (before the positions it then sent).
    pub(super) async fn announce_online(&self, fleet: &str, vehicle: &str, at_ms: i64) {
        metrics::counter!(names::PRESENCE_CHANGES, "state" => PresenceState::Online).increment(1);
        let event = Online { fleet, vehicle_id: vehicle, ts: clock::now_ms() };
        self.emit_presence(fleet, vehicle, "vehicle_online", &event, at_ms).await;
    }

    async fn announce_offline(&self, o: &Offline) {
        metrics::counter!(names::PRESENCE_CHANGES, "state" => PresenceState::Offline).increment(1);
        let event = OfflineEvent { fleet: &o.fleet, vehicle_id: &o.vehicle, last_seen: o.last_seen };
        self.emit_presence(&o.fleet, &o.vehicle, "vehicle_offline", &event, clock::now_ms()).await;
    }

    /// To the fleet's and the vehicle's subscribers on every replica
    /// (recoverable: logged for sockets that recover, section 10).
    async fn emit_presence<T: Serialize + Sync>(
        &self,
        fleet: &str,
        vehicle: &str,
        event: &str,
        payload: &T,
        at_ms: i64,
    ) {
        let audience = Audience {
            fleet,
            rooms: vec![fleet_room(fleet), vehicle_room(fleet, vehicle)],
            target: Target::Vehicle(vehicle),
            at_ms,
        };
        if let Err(e) = self.emit_recoverable(None, audience, event, payload).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (String, String) {
        ("f".to_owned(), "bus-1".to_owned())
    }

    #[tokio::test]
    async fn a_vehicles_last_socket_leaving_waits_for_its_first_arriving() {
        let local = LocalVehicles::default();
        let mut arrived = local.add(&key()).expect("first socket");
        assert!(local.add(&key()).is_none(), "a second socket is no change");
        assert!(local.remove(&key()).is_none());
        let mut left = local.remove(&key()).expect("last socket");
        arrived.wait().await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), left.wait()).await;
        assert!(waiting.is_err(), "the departure went before the arrival reached the store");
        local.finish(&key(), arrived);
        tokio::time::timeout(Duration::from_secs(1), left.wait()).await.expect("departure's turn");
        assert_eq!(local.count(), 0);
        local.finish(&key(), left);
        assert!(local.lock().is_empty(), "a vehicle with no socket and nothing pending is forgotten");
    }

    #[tokio::test]
    async fn a_vehicle_back_before_its_departure_landed_stays_known() {
        let local = LocalVehicles::default();
        let first = local.add(&key()).expect("first socket");
        local.finish(&key(), first);
        let left = local.remove(&key()).expect("last socket");
        let mut back = local.add(&key()).expect("first socket again");
        assert_eq!(local.count(), 1);
        local.finish(&key(), left);
        assert_eq!(local.snapshot(), vec![key()], "the newer arrival keeps the vehicle");
        back.wait().await;
        local.finish(&key(), back);
        assert_eq!(local.count(), 1);
    }
}
