//! Sending a recoverable event that is not a position (presence, chat,
//! notices; geofence crossings are meant to go through here too): it is
//! appended to the fleet's recovery log first, then sent to its rooms on
//! every replica twice, encoded once each: without an offset to the sockets
//! in [`super::PLAIN_ROOM`], and with the log id as one trailing
//! argument to those in [`super::OFFSETS_ROOM`].

use serde::Serialize;
use socketioxide::{BroadcastError, adapter::Adapter, extract::SocketRef};

use super::{OFFSETS_ROOM, PLAIN_ROOM};
use crate::{gateway::Gateway, gateway::fanout::NAMESPACE};

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
        let Some(ns) = self.io.of(NAMESPACE) else { return Ok(()) };
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
        let entry = Entry { e: event, v, r, x: sender.map(|s| s.id.to_string()), p: payload };
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
