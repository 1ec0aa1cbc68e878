//! Sending a recoverable event that is not a position (presence, chat,
//! notices): it is appended to the fleet's recovery log first, then sent to
//! its rooms on every replica twice, encoded once each: without an offset to
//! the sockets in [`super::PLAIN_ROOM`], and with the log id as one trailing
//! argument to those in [`super::OFFSETS_ROOM`].
//!
//! Geofence crossings travel with their position (fan-out sends them, with
//! the position's offset); the replica that accepted the position only logs
//! them here (`Gateway::log_crossings`), for replay.

use serde::Serialize;
use socketioxide::{BroadcastError, adapter::Adapter, extract::SocketRef};

use super::{OFFSETS_ROOM, PLAIN_ROOM};
use crate::{
    gateway::{Gateway, fanout::Outgoing},
    store::recovery::LogId,
};

/// Who an event is for, as a restored socket's replay filters it.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Watchers of the vehicle (its fleet's and its own subscribers):
    /// presence, and geofence crossings.
    Vehicle(&'a str),
    /// Members of a chat room.
    Room(&'a str),
}

/// Where a recoverable event goes, and when it happened.
pub struct Audience<'a> {
    pub fleet: &'a str,
    pub rooms: Vec<String>,
    pub target: Target<'a>,
    /// When the change happened (ms): its offset is on this time (or
    /// just after the log's newest), so an event that caused a position is
    /// ordered before it even when it is logged after the position was
    /// accepted.
    pub at_ms: i64,
}

/// An entry of the fleet's log (read back by `replay`).
#[derive(Serialize)]
struct Entry<'a, T: ?Sized> {
    e: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    v: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    r: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    p: &'a T,
    /// A crossing's geofence, its fix and the offset it was sent with
    /// (its position's), which replay orders and filters it on.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    crossing: Option<CrossingFields<'a>>,
}

#[derive(Serialize)]
struct CrossingFields<'a> {
    g: &'a str,
    lon: f64,
    lat: f64,
    o: String,
}

impl<A: Adapter> Gateway<A> {
    /// Sends `event` to its audience's rooms on every replica (from
    /// `sender`: to the others only), logged for recovery when recovery is on.
    pub async fn emit_recoverable<T: ?Sized + Serialize + Sync>(
        &self,
        sender: Option<&SocketRef<A>>,
        audience: Audience<'_>,
        event: &str,
        payload: &T,
    ) -> Result<(), BroadcastError> {
        let Audience { fleet, rooms, target, at_ms } = audience;
        let Some(ns) = self.ns() else { return Ok(()) };
        let to = |rooms: Vec<String>| match sender {
            Some(s) => s.to(rooms),
            None => ns.clone().to(rooms),
        };
        if !self.recovery_enabled() {
            return to(rooms).emit(event, payload).await;
        }
        let (v, r) = match target {
            Target::Vehicle(v) => (Some(v), None),
            Target::Room(r) => (None, Some(r)),
        };
        let entry = Entry { e: event, v, r, x: sender.map(|s| s.id.to_string()), p: payload, crossing: None };
        let offset = match serde_json::to_string(&entry) {
            Ok(entry) => match self
                .store
                .recovery()
                .append_event(fleet, at_ms, &entry, self.config.recovery_events_max, self.recovery_log_ttl_ms())
                .await
            {
                Ok(id) => Some(id.to_string()),
                Err(e) => {
                    tracing::warn!(error = %e, event, "event not logged for recovery");
                    None
                }
            },
            Err(_) => None,
        };
        let plain = to(rooms.clone()).except(OFFSETS_ROOM).emit(event, payload).await;
        let with_offset = match &offset {
            Some(offset) => to(rooms).except(PLAIN_ROOM).emit(event, &(payload, offset)).await,
            None => to(rooms).except(PLAIN_ROOM).emit(event, payload).await,
        };
        plain.and(with_offset)
    }
}

impl<A: Adapter> Gateway<A> {
    /// Logs, for replay, the geofence crossings of a round of positions
    /// accepted on this replica, in the background and in order. Not in
    /// the position's atomic step: a replica that dies right after the
    /// accept leaves a crossing that is delivered live but not replayed.
    pub(crate) fn log_crossings(&self, round: &[Outgoing]) {
        if !self.recovery_enabled() {
            return;
        }
        let mut entries = Vec::new();
        for p in round.iter().filter(|p| !p.crossings.is_empty()) {
            for (i, c) in p.crossings.iter().enumerate() {
                let event = p.geofence_event(c);
                let entry = Entry {
                    e: "geofence",
                    v: Some(&p.vehicle),
                    r: None,
                    x: None,
                    p: &event,
                    crossing: Some(CrossingFields {
                        g: &c.geofence,
                        lon: p.lon,
                        lat: p.lat,
                        o: LogId::crossing(p.received_at, i).to_string(),
                    }),
                };
                if let Ok(entry) = serde_json::to_string(&entry) {
                    entries.push((p.fleet.clone(), p.received_at, entry));
                }
            }
        }
        if entries.is_empty() {
            return;
        }
        let (store, max, ttl) = (self.store.clone(), self.config.recovery_events_max, self.recovery_log_ttl_ms());
        tokio::spawn(async move {
            for (fleet, at_ms, entry) in entries {
                if let Err(e) = store.recovery().append_event(&fleet, at_ms, &entry, max, ttl).await {
                    tracing::warn!(error = %e, "geofence event not logged for recovery");
                }
            }
        });
    }
}
