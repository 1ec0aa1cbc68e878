//! Restoring a socket once it is connected: its subscriptions and rooms as
//! its record has them, then every recoverable event it missed after its
//! offset, oldest first: positions from the last-known state (only the
//! newest per vehicle, as a position newer than the offset), the other
//! events from the fleet's log, filtered by what the socket watches.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use socketioxide::{adapter::Adapter, extract::SocketRef};

use super::{Plan, Recovering};
use crate::{
    gateway::{
        Conn, Gateway,
        fanout::{fleet_room, socket_room, vehicle_room},
        rooms::chat_room,
    },
    geo::BBox,
    metrics::{RecoveryFallback, SubscriptionKind, names},
    position::PositionKey,
    session::Session,
    store::{
        Scope,
        recovery::{LogId, Missed},
    },
};

/// An entry of the fleet's log (written by `emit`).
#[derive(Deserialize)]
struct Entry<'a> {
    e: &'a str,
    #[serde(default)]
    v: Option<&'a str>,
    #[serde(default)]
    r: Option<&'a str>,
    /// The socket that sent it, which never gets it back.
    #[serde(default)]
    x: Option<&'a str>,
    #[serde(borrow)]
    p: &'a RawValue,
    /// A geofence crossing: its geofence, fix, and the offset it was sent
    /// with (its position's).
    #[serde(default)]
    g: Option<&'a str>,
    #[serde(default)]
    lon: f64,
    #[serde(default)]
    lat: f64,
    #[serde(default)]
    o: Option<&'a str>,
}

/// What a restored socket watches, for filtering what it missed.
struct Watch<'a> {
    session: &'a Session,
    whole_fleet: bool,
    vehicles: std::collections::HashSet<String>,
    boxes: Vec<BBox>,
    geofences: std::collections::HashSet<String>,
    rooms: std::collections::HashSet<String>,
    sid: String,
}

impl Watch<'_> {
    fn position(&self, k: &PositionKey<'_>) -> bool {
        self.session.may_watch(&k.vehicle_id)
            && (self.whole_fleet
                || self.vehicles.contains(k.vehicle_id.as_ref())
                || self.boxes.iter().any(|b| b.contains(k.lon, k.lat)))
    }

    fn event(&self, e: &Entry<'_>) -> bool {
        if e.x.is_some_and(|x| x == self.sid) {
            return false;
        }
        if let (Some(g), Some(v)) = (e.g, e.v) {
            // As fan-out sends a crossing: to the position's watchers and
            // the geofence's subscribers.
            return self.session.may_watch(v)
                && (self.whole_fleet
                    || self.vehicles.contains(v)
                    || self.boxes.iter().any(|b| b.contains(e.lon, e.lat))
                    || self.geofences.contains(g));
        }
        match (e.v, e.r) {
            (Some(v), _) => self.session.may_watch(v) && (self.whole_fleet || self.vehicles.contains(v)),
            (None, Some(r)) => self.rooms.contains(r),
            (None, None) => false,
        }
    }
}

/// Puts the record's subscriptions and rooms back on the socket (as
/// `subscribe` and `join_room` would, within the session's scope).
async fn resubscribe<A: Adapter>(socket: &SocketRef<A>, conn: &Conn, gw: &Gateway<A>, plan: &Plan, session: &Session) {
    let fleet = &session.fleet;
    let watching = {
        let mut subs = conn.subscriptions();
        if plan.state.whole_fleet && !session.is_scoped() && !subs.whole_fleet {
            subs.whole_fleet = true;
            socket.join(fleet_room(fleet));
            metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Fleet).increment(1.0);
        }
        for v in plan.state.vehicles.iter().filter(|v| session.may_watch(v)) {
            if subs.vehicles.insert(v.clone()) {
                socket.join(vehicle_room(fleet, v));
                metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Vehicle).increment(1.0);
            }
        }
        if !session.is_scoped() {
            for b in &plan.state.boxes {
                let b = BBox { min_lon: b[0], min_lat: b[1], max_lon: b[2], max_lat: b[3] };
                if subs.boxes.contains(&b) {
                    continue;
                }
                if subs.boxes.is_empty() {
                    socket.join(socket_room(socket.id));
                }
                subs.boxes.push(b);
                gw.fanout.add_box(fleet, socket.id, b);
                metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Bbox).increment(1.0);
            }
        }
        for g in &plan.state.geofences {
            if subs.geofences.insert(g.clone()) {
                super::super::viewer::join_geofence(socket, session, fleet, g);
                metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Geofence).increment(1.0);
            }
        }
        let newly = subs.count() > 0 && !subs.watching;
        if newly {
            subs.watching = true;
        }
        newly
    };
    if watching && gw.fanout.hear_other_replicas(fleet).await.is_err() {
        conn.subscriptions().watching = false;
    }
    if !session.is_scoped() {
        let mut rooms = conn.rooms();
        for room in plan.state.rooms.iter().take(gw.config.max_rooms) {
            if rooms.insert(room.clone()) {
                socket.join(chat_room(fleet, room));
            }
        }
    }
}

/// Restores the socket and replays what it missed; a gap that can no
/// longer be replayed whole (trimmed since the handshake looked) ends the
/// socket, so the client reconnects and falls back to a fresh one.
pub(super) async fn restore<A: Adapter>(
    socket: &SocketRef<A>,
    conn: &Arc<Conn>,
    gw: &Arc<Gateway<A>>,
    r: &Recovering,
    plan: Plan,
) {
    let Some(session) = conn.session() else { return };
    resubscribe(socket, conn, gw, &plan, &session).await;
    let watch = {
        let subs = conn.subscriptions();
        Watch {
            session: &session,
            whole_fleet: subs.whole_fleet,
            vehicles: subs.vehicles.clone(),
            boxes: subs.boxes.clone(),
            geofences: subs.geofences.clone(),
            rooms: conn.rooms().clone(),
            sid: socket.id.to_string(),
        }
    };
    let max = gw.config.recovery_events_max;
    let events = match gw.store.recovery().events_after(&r.fleet, plan.after, max).await {
        Ok(Missed::Events(events)) => events,
        outcome => {
            let reason = if outcome.is_err() { RecoveryFallback::Unavailable } else { RecoveryFallback::Trimmed };
            metrics::counter!(names::RECOVERY_FALLBACKS, "reason" => reason).increment(1);
            tracing::info!(reason = reason.as_str(), "missed events no longer whole; the socket must reconnect");
            let _ = socket.clone().disconnect();
            return;
        }
    };
    let positions = match gw.store.positions(&r.fleet, Scope::Fleet).await {
        Ok(p) => p,
        Err(e) => {
            metrics::counter!(names::RECOVERY_FALLBACKS, "reason" => RecoveryFallback::Unavailable).increment(1);
            tracing::warn!(error = %e, "missed positions not read; the socket must reconnect");
            let _ = socket.clone().disconnect();
            return;
        }
    };
    // (offset, event, payload), merged oldest first.
    let mut missed: Vec<(LogId, &str, &RawValue)> = Vec::new();
    let raw: Vec<Box<RawValue>> = positions.into_iter().filter_map(|p| RawValue::from_string(p).ok()).collect();
    for p in &raw {
        if let Ok(k) = serde_json::from_str::<PositionKey>(p.get())
            && LogId::position(k.received_at) > plan.after
            && watch.position(&k)
        {
            missed.push((LogId::position(k.received_at), "locationupdate", p));
        }
    }
    for (id, entry) in &events {
        let Ok(e) = serde_json::from_str::<Entry>(entry) else { continue };
        // A crossing sorts, and is skipped, on the offset it went out with.
        let offset = match e.o {
            Some(o) => match LogId::parse(o) {
                Some(o) if o > plan.after => o,
                _ => continue,
            },
            None => *id,
        };
        if watch.event(&e) {
            missed.push((offset, e.e, e.p));
        }
    }
    // Stable: a crossing stays after its position, and after the one before it.
    missed.sort_by_key(|(id, _, _)| *id);
    let conflating = gw.config.batch_ms > 0;
    let mut sent = 0u64;
    let mut batch: Vec<&RawValue> = Vec::new();
    let mut batch_offset = LogId::ZERO;
    for (id, event, payload) in &missed {
        if conflating && *event == "locationupdate" {
            batch.push(payload);
            batch_offset = batch_offset.max(*id);
            continue;
        }
        if socket.emit(*event, &(payload, id.to_string())).is_ok() {
            sent += 1;
        }
    }
    if !batch.is_empty() {
        let items = batch.len() as u64;
        let locations = crate::gateway::fanout::LocationsBatch { fleet: &session.fleet, items: batch };
        if socket.emit("locations", &(locations, batch_offset.to_string())).is_ok() {
            sent += items;
        }
    }
    metrics::counter!(names::RECOVERY_SUCCESSES).increment(1);
    metrics::counter!(names::RECOVERY_REPLAYED).increment(sent);
    tracing::debug!(sid = %socket.id, replayed = sent, "connection state recovered");
}
