//! Watching positions (section 5.3): `subscribe`, `unsubscribe`, the
//! bus-app's `providerjoin`, and the snapshot of last-known positions that
//! answers a subscription.

use std::{collections::HashSet, sync::Arc};

use serde::Serialize;
use serde_json::{Value, value::RawValue};
use socketioxide::{adapter::Adapter, extract::SocketRef};

use super::{
    ClientEvent, Conn, Gateway,
    auth::require_session,
    fanout::{fleet_room, geofence_room, scoped_geofence_room, socket_room, vehicle_room},
};
use crate::{
    error::{ApiError, ErrorCode},
    geo::BBox,
    ids,
    metrics::{SubscriptionKind, names},
    position::PositionKey,
    session::Session,
    store::Scope,
};

/// What a `subscribe` or `unsubscribe` names.
#[derive(Debug)]
pub struct Selection {
    pub fleet: String,
    pub vehicles: Vec<String>,
    pub bbox: Option<BBox>,
    /// Geofences whose events to watch (section 11): no positions come of these.
    pub geofences: Vec<String>,
}

/// A list of ids in a selection, as its error messages name it.
struct IdList {
    field: &'static str,
    /// What its items are.
    items: &'static str,
    /// What leaving it out means.
    omitted: &'static str,
}

const VEHICLES: IdList = IdList { field: "vehicles", items: "vehicle ids", omitted: "for the whole fleet" };
const GEOFENCES: IdList = IdList { field: "geofences", items: "ids", omitted: "instead" };

impl IdList {
    /// Reads the list: non-empty, at most `max`, each id once, in order;
    /// absent, an empty list.
    fn read(&self, value: Option<&Value>, max: usize) -> Result<Vec<String>, ApiError> {
        let Self { field, items: what, omitted } = self;
        let items = match value {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(ApiError::invalid(format!("{field}: must be an array of {what}"))),
        };
        if items.is_empty() {
            return Err(ApiError::invalid(format!("{field}: must not be empty (omit it {omitted})")));
        }
        if items.len() > max {
            return Err(ApiError::new(ErrorCode::PayloadTooLarge, format!("{field}: at most {max}")));
        }
        let mut seen = HashSet::with_capacity(items.len());
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(v) if ids::is_valid_id(v) => {
                    if seen.insert(v.as_str()) {
                        out.push(v.clone());
                    }
                }
                _ => {
                    return Err(ApiError::invalid(format!("{field}: items must be {what} (1–64 of [A-Za-z0-9._:-])")));
                }
            }
        }
        Ok(out)
    }
}

impl Selection {
    fn whole_fleet(&self) -> bool {
        self.vehicles.is_empty() && self.bbox.is_none() && self.geofences.is_empty()
    }

    /// Reads the payload of `session`'s `subscribe` or `unsubscribe` (at most
    /// `max` vehicle ids); public for the property tests of `tests/fuzz_parsing.rs`.
    pub fn parse(payload: &Value, session: &Session, max: usize) -> Result<Self, ApiError> {
        let obj = match payload {
            Value::Null => None,
            Value::Object(o) => Some(o),
            _ => return Err(ApiError::invalid("payload: must be an object")),
        };
        let field = |k: &str| obj.and_then(|o| o.get(k)).filter(|v| !v.is_null());
        let fleet = match field("fleet") {
            None => session.fleet.clone(),
            Some(Value::String(f)) if *f == session.fleet => f.clone(),
            Some(Value::String(f)) if ids::is_valid_id(f) => {
                return Err(ApiError::forbidden("the session belongs to another fleet"));
            }
            Some(_) => return Err(ApiError::invalid("fleet: must be a fleet id")),
        };
        let vehicles = VEHICLES.read(field("vehicles"), max)?;
        let bbox = field("bbox").map(|b| BBox::from_json(b, "bbox")).transpose()?;
        let geofences = GEOFENCES.read(field("geofences"), max)?;
        Ok(Self { fleet, vehicles, bbox, geofences })
    }

    /// Whether `session` may watch this selection: a scoped viewer names
    /// only vehicles of its scope, never the whole fleet or a box (a box
    /// would show whichever vehicles drive into it). A scoped session's
    /// geofence subscriptions are narrowed to its vehicles by their rooms
    /// (`fanout::scoped_geofence_room`).
    pub fn authorize(&self, session: &Session) -> Result<(), ApiError> {
        let Some(scope) = &session.vehicles else { return Ok(()) };
        if self.whole_fleet() {
            return Err(ApiError::forbidden(
                "this token may watch only its own vehicles: name them in vehicles instead of the whole fleet",
            ));
        }
        if self.bbox.is_some() {
            return Err(ApiError::forbidden("this token may watch only its own vehicles, not a bbox"));
        }
        match self.vehicles.iter().find(|v| !scope.allows(v)) {
            Some(v) => Err(ApiError::forbidden(format!("vehicles: {v} is outside this token's vehicles"))),
            None => Ok(()),
        }
    }
}

#[derive(Serialize)]
struct Snapshot {
    fleet: String,
    vehicles: Vec<Box<RawValue>>,
}

#[derive(Serialize)]
struct Unsubscribed {
    fleet: String,
}

pub(super) async fn on_subscribe<A: Adapter>(req: ClientEvent<A>, conn: Arc<Conn>, gw: Arc<Gateway<A>>) {
    let result = async {
        let session = require_session(&conn)?;
        let selection = Selection::parse(&req.payload, &session, gw.config.max_subscriptions)?;
        subscribe(&req.socket, &conn, &gw, selection).await
    }
    .await;
    req.reply(result);
}

/// `providerjoin { providerId }`: the bus-app's whole-fleet subscribe.
pub(super) async fn on_provider_join<A: Adapter>(req: ClientEvent<A>, conn: Arc<Conn>, gw: Arc<Gateway<A>>) {
    let result = async {
        let session = require_session(&conn)?;
        let provider = req.payload.get("providerId").cloned().unwrap_or(Value::Null);
        let provider = match provider {
            Value::String(s) => Value::String(s),
            Value::Number(n) => Value::String(n.to_string()),
            _ => return Err(ApiError::invalid("providerId: required")),
        };
        let selection =
            Selection::parse(&serde_json::json!({ "fleet": provider }), &session, gw.config.max_subscriptions)?;
        subscribe(&req.socket, &conn, &gw, selection).await
    }
    .await;
    req.reply(result);
}

async fn subscribe<A: Adapter>(
    socket: &SocketRef<A>,
    conn: &Arc<Conn>,
    gw: &Gateway<A>,
    sel: Selection,
) -> Result<Snapshot, ApiError> {
    let newly_watching = {
        let mut subs = conn.subscriptions();
        // The socket's session as it is now, under the lock a
        // re-authentication narrows the subscriptions under: a scope that
        // changed since the handler started is the one that counts.
        let current = require_session(conn)?;
        sel.authorize(&current)?;
        let added = usize::from(sel.whole_fleet() && !subs.whole_fleet)
            + sel.vehicles.iter().filter(|v| !subs.vehicles.contains(*v)).count()
            + usize::from(sel.bbox.is_some_and(|b| !subs.boxes.contains(&b)))
            + sel.geofences.iter().filter(|g| !subs.geofences.contains(*g)).count();
        if subs.count() + added > gw.config.max_subscriptions {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("at most {} subscriptions per socket", gw.config.max_subscriptions),
            ));
        }
        if sel.whole_fleet() && !subs.whole_fleet {
            subs.whole_fleet = true;
            socket.join(fleet_room(&sel.fleet));
            metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Fleet).increment(1.0);
        }
        for v in &sel.vehicles {
            if subs.vehicles.insert(v.clone()) {
                socket.join(vehicle_room(&sel.fleet, v));
                metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Vehicle).increment(1.0);
            }
        }
        if let Some(b) = sel.bbox.filter(|b| !subs.boxes.contains(b)) {
            if subs.boxes.is_empty() {
                socket.join(socket_room(socket.id));
            }
            subs.boxes.push(b);
            gw.fanout.add_box(&sel.fleet, socket.id, b);
            metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Bbox).increment(1.0);
        }
        for g in &sel.geofences {
            if subs.geofences.insert(g.clone()) {
                join_geofence(socket, &current, &sel.fleet, g);
                metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Geofence).increment(1.0);
            }
        }
        let newly = !subs.watching;
        subs.watching = true;
        newly
    };
    // Listen to other replicas before reading the snapshot, so no update
    // falls between the two.
    if newly_watching && let Err(e) = gw.fanout.hear_other_replicas(&sel.fleet).await {
        conn.subscriptions().watching = false;
        return Err(e);
    }
    let mut vehicles = snapshot(gw, &sel).await?;
    // A re-authentication may have narrowed the scope while the snapshot was read.
    if let Some(session) = conn.session().filter(|s| s.is_scoped()) {
        vehicles
            .retain(|e| serde_json::from_str::<PositionKey>(e.get()).is_ok_and(|k| session.may_watch(&k.vehicle_id)));
    }
    Ok(Snapshot { fleet: sel.fleet, vehicles })
}

/// The rooms a socket hears a geofence's crossings in: a scoped session
/// only those of its own vehicles.
fn geofence_rooms(session: &Session, fleet: &str, geofence: &str) -> Vec<String> {
    match &session.vehicles {
        None => vec![geofence_room(fleet, geofence)],
        Some(scope) => scope.iter().map(|v| scoped_geofence_room(fleet, geofence, v)).collect(),
    }
}

pub(super) fn join_geofence<A: Adapter>(socket: &SocketRef<A>, session: &Session, fleet: &str, geofence: &str) {
    for room in geofence_rooms(session, fleet, geofence) {
        socket.join(room);
    }
}

fn leave_geofence<A: Adapter>(socket: &SocketRef<A>, session: &Session, fleet: &str, geofence: &str) {
    for room in geofence_rooms(session, fleet, geofence) {
        socket.leave(room);
    }
}

/// Last-known positions within the selection, each vehicle once.
async fn snapshot<A: Adapter>(gw: &Gateway<A>, sel: &Selection) -> Result<Vec<Box<RawValue>>, ApiError> {
    if sel.whole_fleet() {
        let encoded = gw.store.positions(&sel.fleet, Scope::Fleet).await?;
        return Ok(encoded.into_iter().filter_map(|e| RawValue::from_string(e).ok()).collect());
    }
    let mut encoded = Vec::new();
    if !sel.vehicles.is_empty() {
        encoded = gw.store.positions(&sel.fleet, Scope::Vehicles(&sel.vehicles)).await?;
    }
    if let Some(b) = sel.bbox {
        // A vehicle named in `vehicles` and inside the box comes once.
        let named: HashSet<&str> = sel.vehicles.iter().map(String::as_str).collect();
        let all = gw.store.positions(&sel.fleet, Scope::Fleet).await?;
        encoded.extend(all.into_iter().filter(|e| {
            serde_json::from_str::<PositionKey>(e)
                .is_ok_and(|k| b.contains(k.lon, k.lat) && !named.contains(k.vehicle_id.as_ref()))
        }));
    }
    Ok(encoded.into_iter().filter_map(|e| RawValue::from_string(e).ok()).collect())
}

pub(super) async fn on_unsubscribe<A: Adapter>(req: ClientEvent<A>, conn: Arc<Conn>, gw: Arc<Gateway<A>>) {
    let result = async {
        let session = require_session(&conn)?;
        let sel = Selection::parse(&req.payload, &session, gw.config.max_subscriptions)?;
        let stop_watching = {
            let mut subs = conn.subscriptions();
            let everything = sel.whole_fleet();
            if everything && subs.whole_fleet {
                subs.whole_fleet = false;
                req.socket.leave(fleet_room(&sel.fleet));
                metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Fleet).decrement(1.0);
            }
            let vehicles: Vec<String> = if everything { subs.vehicles.drain().collect() } else { sel.vehicles.clone() };
            for v in vehicles {
                if everything || subs.vehicles.remove(&v) {
                    req.socket.leave(vehicle_room(&sel.fleet, &v));
                    metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Vehicle).decrement(1.0);
                }
            }
            let boxes: Vec<BBox> = if everything {
                std::mem::take(&mut subs.boxes)
            } else {
                let keep: Vec<BBox> = subs.boxes.iter().copied().filter(|b| Some(*b) != sel.bbox).collect();
                let gone = subs.boxes.iter().copied().filter(|b| Some(*b) == sel.bbox).collect();
                subs.boxes = keep;
                gone
            };
            for b in boxes {
                gw.fanout.remove_box(&sel.fleet, req.socket.id, b);
                metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Bbox).decrement(1.0);
            }
            let geofences: Vec<String> =
                if everything { subs.geofences.drain().collect() } else { sel.geofences.clone() };
            for g in geofences {
                if everything || subs.geofences.remove(&g) {
                    leave_geofence(&req.socket, &session, &sel.fleet, &g);
                    metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Geofence).decrement(1.0);
                }
            }
            if subs.boxes.is_empty() {
                req.socket.leave(socket_room(req.socket.id));
            }
            subs.stops_watching()
        };
        if stop_watching {
            gw.fanout.unwatch(&sel.fleet).await;
        }
        Ok(Unsubscribed { fleet: sel.fleet })
    }
    .await;
    req.reply(result);
}

/// After a re-authentication: drops every subscription the socket's new
/// session may not hold. A scoped viewer keeps only its own vehicles; the
/// whole fleet, boxes and other vehicles go, before the `authenticate` ack.
pub(super) async fn narrow_to_session<A: Adapter>(socket: &SocketRef<A>, conn: &Conn, gw: &Gateway<A>) {
    let Some(session) = conn.session().filter(|s| s.is_scoped()) else { return };
    let stop_watching = {
        let mut subs = conn.subscriptions();
        if std::mem::take(&mut subs.whole_fleet) {
            socket.leave(fleet_room(&session.fleet));
            metrics::gauge!(crate::metrics::names::SUBSCRIPTIONS, "kind" => crate::metrics::SubscriptionKind::Fleet)
                .decrement(1.0);
        }
        let outside: Vec<String> = subs.vehicles.iter().filter(|v| !session.may_watch(v)).cloned().collect();
        for v in outside {
            subs.vehicles.remove(&v);
            socket.leave(vehicle_room(&session.fleet, &v));
            metrics::gauge!(crate::metrics::names::SUBSCRIPTIONS, "kind" => crate::metrics::SubscriptionKind::Vehicle)
                .decrement(1.0);
        }
        let boxes = std::mem::take(&mut subs.boxes);
        for b in &boxes {
            gw.fanout.remove_box(&session.fleet, socket.id, *b);
            metrics::gauge!(crate::metrics::names::SUBSCRIPTIONS, "kind" => crate::metrics::SubscriptionKind::Bbox)
                .decrement(1.0);
        }
        if !boxes.is_empty() {
            socket.leave(socket_room(socket.id));
        }
        // Joined under the old session's scope, which may have held other
        // vehicles: every geofence room goes (the client subscribes again).
        let geofences = std::mem::take(&mut subs.geofences).len();
        if geofences > 0 {
            let (unscoped, scoped) = (geofence_room(&session.fleet, ""), scoped_geofence_room(&session.fleet, "", ""));
            let (scoped_prefix, _) = scoped.split_at(scoped.len() - 1);
            for room in socket.rooms() {
                if room.starts_with(unscoped.as_str()) || room.starts_with(scoped_prefix) {
                    socket.leave(room);
                }
            }
            metrics::gauge!(crate::metrics::names::SUBSCRIPTIONS, "kind" => crate::metrics::SubscriptionKind::Geofence)
                .decrement(geofences as f64);
        }
        subs.stops_watching()
    };
    if stop_watching {
        gw.fanout.unwatch(&session.fleet).await;
    }
}

/// Drops everything a closing socket watched. Rooms go with the socket.
pub(super) async fn forget<A: Adapter>(socket: &SocketRef<A>, conn: &Conn, gw: &Gateway<A>) {
    let Some(session) = conn.session() else { return };
    let (watching, boxes, whole, vehicles) = {
        let mut subs = conn.subscriptions();
        let whole = std::mem::take(&mut subs.whole_fleet);
        let vehicles = std::mem::take(&mut subs.vehicles).len();
        let geofences = std::mem::take(&mut subs.geofences).len();
        metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Geofence).decrement(geofences as f64);
        (std::mem::take(&mut subs.watching), std::mem::take(&mut subs.boxes), whole, vehicles)
    };
    for b in &boxes {
        gw.fanout.remove_box(&session.fleet, socket.id, *b);
    }
    metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Fleet).decrement(f64::from(u8::from(whole)));
    metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Vehicle).decrement(vehicles as f64);
    metrics::gauge!(names::SUBSCRIPTIONS, "kind" => SubscriptionKind::Bbox).decrement(boxes.len() as f64);
    if watching {
        gw.fanout.unwatch(&session.fleet).await;
    }
}
