//! Connection state recovery (contract section 10): a client that opted in
//! with `auth.recovery` and lost its connection reconnects to any replica
//! with the `pid` and `offset` socket.io-client sends by itself, and gets
//! back its socket id, session, subscriptions and rooms, then everything it
//! missed, then live events.
//!
//! - The handshake (`decide`) looks the socket's record up in the store
//!   and either restores it (the CONNECT reply repeats the `pid`, under the
//!   old socket id: `vendor/PATCHES.md` S3) or falls back to a fresh socket
//!   with a new `pid`; it never restores a gap it cannot replay whole.
//! - The record (`store::recovery`) is written when the socket connects,
//!   after each change of what it watches, and when it closes; while the
//!   socket lives this replica extends every record it holds in one call
//!   per fleet per period ([`run`]), so a replica that dies leaves records
//!   that last the recovery window past the last time it heard its clients.
//! - Offsets: positions carry `<receivedAt>-0`; presence, chat and notices
//!   the id of their entry in the fleet's log ([`emit`]); geofence
//!   crossings their position's offset. Missed positions come from the
//!   last-known state (the newest per vehicle), the rest from the log
//!   (`replay`).

pub mod emit;
mod replay;

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use socketioxide::{adapter::Adapter, extract::SocketRef, socket::Sid};

use super::{Conn, Gateway};
use crate::lock::{MutexExt, RwLockExt};
use crate::{
    ids,
    metrics::{RecoveryFallback, names},
    session::Session,
    store::recovery::{LogId, Missed, SocketRecord},
};

pub use emit::{Audience, Target};

/// Room of the local sockets that get offsets, and of those that do not:
/// each socket of the namespace is in one of them while recovery is on, so
/// an event goes out once encoded without an offset and once with.
pub const OFFSETS_ROOM: &str = "o/1";
pub const PLAIN_ROOM: &str = "o/0";

/// A recovering socket's standing on this replica.
#[derive(Debug)]
pub struct Recovering {
    pub fleet: String,
    pub pid: String,
    /// This connection's claim on the record.
    pub holder: String,
    /// Where the socket's history starts ([`State::since`]).
    pub since: String,
}

/// The local sockets that opted in, read by fan-out on every delivery
/// (without a lock while there are none).
#[derive(Default)]
pub struct Registry {
    count: AtomicUsize,
    sockets: RwLock<HashMap<Sid, Arc<Recovering>>>,
}

impl Registry {
    /// Whether events to `sid` carry offsets.
    pub fn wants_offsets(&self, sid: Sid) -> bool {
        self.count.load(Ordering::Relaxed) > 0 && self.read().contains_key(&sid)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Sid, Arc<Recovering>>> {
        self.sockets.read_or_recover()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Sid, Arc<Recovering>>> {
        self.sockets.write_or_recover()
    }

    fn insert(&self, sid: Sid, r: Arc<Recovering>) {
        let mut sockets = self.write();
        sockets.insert(sid, r);
        self.count.store(sockets.len(), Ordering::Relaxed);
    }

    /// Forgets `sid` if `r` is still what it holds (a restored socket with
    /// the same id may have replaced it).
    fn remove(&self, sid: Sid, r: &Arc<Recovering>) -> bool {
        let mut sockets = self.write();
        let held = sockets.get(&sid).is_some_and(|current| Arc::ptr_eq(current, r));
        if held {
            sockets.remove(&sid);
            self.count.store(sockets.len(), Ordering::Relaxed);
        }
        held
    }

    fn by_fleet(&self) -> HashMap<String, Vec<(String, String)>> {
        let mut fleets: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for r in self.read().values() {
            fleets.entry(r.fleet.clone()).or_default().push((r.pid.clone(), r.holder.clone()));
        }
        fleets
    }
}

/// What a socket's record keeps: enough to rebuild it on any replica.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub sid: String,
    pub session_id: String,
    #[serde(default)]
    pub whole_fleet: bool,
    #[serde(default)]
    pub vehicles: Vec<String>,
    /// `[minLon, minLat, maxLon, maxLat]`.
    #[serde(default)]
    pub boxes: Vec<[f64; 4]>,
    #[serde(default)]
    pub geofences: Vec<String>,
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Where its history starts (when it first connected): a client that
    /// received nothing yet recovers from here.
    pub since: String,
}

/// The recovery fields of a handshake's `auth`.
#[derive(Debug, Default, Clone)]
pub struct Request {
    pub opted_in: bool,
    pub pid: Option<String>,
    pub offset: Option<String>,
}

impl Request {
    /// Reads `recovery`, `pid` and `offset` from the handshake's `auth`;
    /// values of other types count as absent (the official client sends
    /// `pid` and `offset` to every server, recovery or not).
    pub fn from_auth(auth: Option<&serde_json::Value>) -> Self {
        let field = |k: &str| auth.and_then(|a| a.get(k));
        let string = |k: &str| field(k).and_then(|v| v.as_str()).map(str::to_owned);
        Self {
            opted_in: field("recovery").and_then(|v| v.as_bool()).unwrap_or(false),
            pid: string("pid"),
            offset: string("offset"),
        }
    }
}

/// What the handshake decided for a socket.
pub enum Decision {
    /// Recovery off, not asked for, or no session to recover.
    Off,
    /// A new recovering socket (with why an attempt fell back, if one did).
    Fresh,
    /// Restore this socket.
    Restore(Box<Plan>),
}

/// A restoration decided in the handshake and carried out once connected.
pub struct Plan {
    pub pid: String,
    pub sid: Sid,
    pub state: State,
    /// Replay what was logged after this.
    pub after: LogId,
}

/// The plan between the handshake and the connect handler (a socket extension).
#[derive(Clone)]
struct Pending(Arc<std::sync::Mutex<Option<Box<Plan>>>>);

fn fall_back(reason: RecoveryFallback) -> Decision {
    metrics::counter!(names::RECOVERY_FALLBACKS, "reason" => reason).increment(1);
    tracing::debug!(reason = reason.as_str(), "connection state not recovered; a fresh socket");
    Decision::Fresh
}

/// A private id: the fleet (the record's key lives in its slot) and 192
/// random bits.
fn new_pid(fleet: &str) -> String {
    format!("{fleet}/{}", ids::new_session_id())
}

fn pid_fleet(pid: &str) -> Option<&str> {
    let (fleet, rest) = pid.split_once('/')?;
    (ids::is_valid_id(fleet) && ids::is_plausible_session_id(rest)).then_some(fleet)
}

impl<A: Adapter> Gateway<A> {
    pub(crate) fn recovery_enabled(&self) -> bool {
        self.config.recovery_secs > 0
    }

    fn recovery_window_ms(&self) -> i64 {
        i64::try_from(self.config.recovery_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// How often this replica extends the records it holds.
    fn recovery_refresh_every(&self) -> Duration {
        Duration::from_millis((self.config.recovery_secs.saturating_mul(1000) / 4).clamp(250, 30_000))
    }

    /// A live socket's record outlives the last refresh by the window.
    fn recovery_record_ttl_ms(&self) -> i64 {
        let refresh = i64::try_from(self.recovery_refresh_every().as_millis()).unwrap_or(i64::MAX);
        self.recovery_window_ms().saturating_add(refresh)
    }

    /// The log keeps its events a window past the last append, plus the
    /// refresh period a record may outlive it by.
    fn recovery_log_ttl_ms(&self) -> i64 {
        let refresh = i64::try_from(self.recovery_refresh_every().as_millis()).unwrap_or(i64::MAX);
        self.recovery_window_ms().saturating_mul(2).saturating_add(refresh)
    }
}

/// The handshake's part, with the socket's credentials checked and its
/// session known (`session`: the one the credentials gave). Returns the
/// session the socket uses (a restored socket gets back the one it had)
/// and the decision.
pub(super) async fn decide<A: Adapter>(
    gw: &Gateway<A>,
    req: &Request,
    session: Option<Session>,
) -> (Option<Session>, Decision) {
    let Some(session) = session else { return (None, Decision::Off) };
    if !gw.recovery_enabled() || !req.opted_in {
        return (Some(session), Decision::Off);
    }
    let Some(pid) = &req.pid else { return (Some(session), Decision::Fresh) };
    metrics::counter!(names::RECOVERY_ATTEMPTS).increment(1);
    match restorable(gw, req, pid, &session).await {
        Ok((restored, plan)) => {
            if restored.session_id != session.session_id {
                // The token opened a session the restored socket does not need.
                if let Err(e) = gw.store.delete_session(&session.session_id).await {
                    tracing::debug!(error = %e, "unused session not deleted; it expires by itself");
                }
            }
            (Some(restored), Decision::Restore(Box::new(plan)))
        }
        Err(reason) => (Some(session), fall_back(reason)),
    }
}

/// Whether the socket of `pid` can be restored for `session`, and how.
async fn restorable<A: Adapter>(
    gw: &Gateway<A>,
    req: &Request,
    pid: &str,
    session: &Session,
) -> Result<(Session, Plan), RecoveryFallback> {
    let unavailable = |e: crate::store::StoreError| {
        tracing::warn!(error = %e, "recovery state not read");
        RecoveryFallback::Unavailable
    };
    let fleet = pid_fleet(pid).ok_or(RecoveryFallback::UnknownPid)?;
    if fleet != session.fleet {
        return Err(RecoveryFallback::UnknownPid);
    }
    let record = gw.store.recovery().socket(fleet, pid).await.map_err(unavailable)?;
    let record = record.ok_or(RecoveryFallback::UnknownPid)?;
    let state: State = serde_json::from_str(&record.state).map_err(|_| RecoveryFallback::UnknownPid)?;
    let sid: Sid = state.sid.parse().map_err(|_| RecoveryFallback::UnknownPid)?;
    // The record's session must still be live, and the credentials must be
    // its principal's: a token of the same subject and role, or the session itself.
    let old = if state.session_id == session.session_id {
        session.clone()
    } else {
        let old = gw.store.session(&state.session_id).await.map_err(unavailable)?;
        let old = old.filter(|s| !s.is_expired(crate::clock::now_ms())).ok_or(RecoveryFallback::SessionGone)?;
        let same = old.sub == session.sub
            && old.fleet == session.fleet
            && old.role == session.role
            && old.vehicle == session.vehicle
            && old.vehicles == session.vehicles;
        if !same {
            return Err(RecoveryFallback::Mismatch);
        }
        old
    };
    let after = match &req.offset {
        Some(offset) => LogId::parse(offset).ok_or(RecoveryFallback::BadOffset)?,
        None => LogId::parse(&state.since).ok_or(RecoveryFallback::UnknownPid)?,
    };
    match gw.store.recovery().events_after(fleet, after, gw.config.recovery_events_max).await.map_err(unavailable)? {
        Missed::Trimmed => return Err(RecoveryFallback::Trimmed),
        Missed::Events(_) => {}
    }
    Ok((old, Plan { pid: pid.to_owned(), sid, state, after }))
}

/// Still in the handshake, once it succeeded: puts the pid (and the
/// restored id) in the CONNECT reply, claims the record for this
/// connection and files the socket under the room that says whether its
/// events carry offsets.
pub(super) async fn on_handshake<A: Adapter>(socket: &SocketRef<A>, conn: &Arc<Conn>, gw: &Gateway<A>, d: Decision) {
    if !gw.recovery_enabled() {
        return;
    }
    let session = conn.session();
    let (pid, sid, state, plan) = match (d, &session) {
        (Decision::Restore(plan), Some(_)) => (plan.pid.clone(), plan.sid, plan.state.clone(), Some(plan)),
        (Decision::Fresh, Some(s)) => {
            let state = State {
                sid: socket.id.to_string(),
                session_id: s.session_id.clone(),
                since: LogId::position(crate::clock::now_ms()).to_string(),
                ..State::default()
            };
            (new_pid(&s.fleet), socket.id, state, None)
        }
        _ => {
            socket.join(PLAIN_ROOM);
            return;
        }
    };
    let Some(session) = session else { return };
    let r = Arc::new(Recovering {
        fleet: session.fleet.clone(),
        pid: pid.clone(),
        holder: ids::new_session_id(),
        since: state.since.clone(),
    });
    if let Err(e) = write_state(gw, &r, &state, true, gw.recovery_record_ttl_ms()).await {
        // Without a record the socket could never be restored: it connects
        // as one that did not opt in.
        tracing::warn!(error = %e, "recovery record not stored; the socket connects without recovery");
        socket.join(PLAIN_ROOM);
        return;
    }
    socket.set_pid(pid);
    if plan.is_some() {
        socket.restore_id(sid);
    }
    socket.join(OFFSETS_ROOM);
    socket.extensions.insert(r);
    socket.extensions.insert(Pending(Arc::new(std::sync::Mutex::new(plan))));
}

async fn write_state<A: Adapter>(
    gw: &Gateway<A>,
    r: &Recovering,
    state: &State,
    claim: bool,
    ttl_ms: i64,
) -> Result<bool, crate::store::StoreError> {
    let record = SocketRecord {
        holder: r.holder.clone(),
        state: serde_json::to_string(state).map_err(|e| crate::store::StoreError::Corrupt(e.to_string()))?,
    };
    gw.store.recovery().save_socket(&r.fleet, &r.pid, &record, ttl_ms, claim).await
}

/// The state of a live socket, as its record keeps it.
fn current_state<A: Adapter>(socket: &SocketRef<A>, conn: &Conn, since: &str) -> Option<State> {
    let session = conn.session()?;
    let (whole_fleet, vehicles, boxes, geofences) = {
        let subs = conn.subscriptions();
        (
            subs.whole_fleet,
            subs.vehicles.iter().cloned().collect(),
            subs.boxes.iter().map(|b| [b.min_lon, b.min_lat, b.max_lon, b.max_lat]).collect(),
            subs.geofences.iter().cloned().collect(),
        )
    };
    let rooms = conn.rooms().iter().cloned().collect();
    Some(State {
        sid: socket.id.to_string(),
        session_id: session.session_id.clone(),
        whole_fleet,
        vehicles,
        boxes,
        geofences,
        rooms,
        since: since.to_owned(),
    })
}

/// The connect handler's part: a restored socket gets its subscriptions
/// and rooms back, then what it missed. Every recovering socket is filed
/// for the periodic refresh and for offsets.
pub(super) async fn on_connected<A: Adapter>(socket: &SocketRef<A>, conn: &Arc<Conn>, gw: &Arc<Gateway<A>>) {
    let Some(r) = socket.extensions.get::<Arc<Recovering>>() else { return };
    gw.fanout.recovering.insert(socket.id, r.clone());
    // This runs as its own task after the connect packet left: a client
    // that closed at once may have been through the disconnect handler
    // already, which found nothing to release. Without this the record
    // would be refreshed for a socket that is gone, and restorable forever.
    if !socket.connected() {
        on_disconnect(socket, conn, gw).await;
        return;
    }
    let plan = socket.extensions.get::<Pending>().and_then(|p| p.0.lock_or_recover().take());
    socket.extensions.remove::<Pending>();
    let Some(plan) = plan else { return };
    replay::restore(socket, conn, gw, &r, *plan).await;
}

/// After an event that may have changed what the socket watches or
/// which rooms it is in: its record follows.
pub(super) async fn after_change<A: Adapter>(socket: &SocketRef<A>, conn: &Conn, gw: &Gateway<A>) {
    let Some(r) = socket.extensions.get::<Arc<Recovering>>() else { return };
    save(socket, conn, gw, &r, gw.recovery_record_ttl_ms()).await;
}

/// Writes the socket's record as it is now, while this connection holds it.
async fn save<A: Adapter>(socket: &SocketRef<A>, conn: &Conn, gw: &Gateway<A>, r: &Recovering, ttl_ms: i64) {
    let Some(state) = current_state(socket, conn, &r.since) else { return };
    if let Err(e) = write_state(gw, r, &state, false, ttl_ms).await {
        tracing::warn!(error = %e, "recovery record not updated");
    }
}

/// Before a closing socket's subscriptions are dropped: its record keeps
/// them for the recovery window, counted from now.
pub(super) async fn on_disconnect<A: Adapter>(socket: &SocketRef<A>, conn: &Conn, gw: &Gateway<A>) {
    let Some(r) = socket.extensions.get::<Arc<Recovering>>() else { return };
    if !gw.fanout.recovering.remove(socket.id, &r) {
        return;
    }
    save(socket, conn, gw, &r, gw.recovery_window_ms()).await;
}

/// Extends the records of this replica's recovering sockets, one call per
/// fleet per period, until the process stops.
pub async fn run<A: Adapter>(gw: Arc<Gateway<A>>) {
    if !gw.recovery_enabled() {
        return;
    }
    let every = gw.recovery_refresh_every();
    let ttl = gw.recovery_record_ttl_ms();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (fleet, records) in gw.fanout.recovering.by_fleet() {
            if let Err(e) = gw.store.recovery().touch_sockets(&fleet, &records, ttl).await {
                tracing::warn!(error = %e, "recovery records not refreshed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_names_its_fleet_and_nothing_else_parses_as_one() {
        let pid = new_pid("demo");
        assert_eq!(pid_fleet(&pid), Some("demo"));
        for bad in ["", "demo", "demo/", "/abc", "de mo/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "demo/short"] {
            assert_eq!(pid_fleet(bad), None, "{bad}");
        }
    }

    #[test]
    fn recovery_fields_of_other_types_count_as_absent() {
        let auth = serde_json::json!({ "token": "t", "recovery": "yes", "pid": 5, "offset": "1-0" });
        let r = Request::from_auth(Some(&auth));
        assert!(!r.opted_in && r.pid.is_none());
        assert_eq!(r.offset.as_deref(), Some("1-0"));
        let auth = serde_json::json!({ "session": "s", "recovery": true, "pid": "p" });
        let r = Request::from_auth(Some(&auth));
        assert!(r.opted_in && r.pid.as_deref() == Some("p") && r.offset.is_none());
    }
}
