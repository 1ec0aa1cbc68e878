//! What fleetgate keeps per socket: its session once authenticated (so no
//! update asks the store who the socket is), what it watches, and its
//! place in the deadlines that end it.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::oneshot;
use tokio_util::time::delay_queue::Key;

use super::limits::{EventLimiter, Slot};
use crate::lock::MutexExt;
use crate::{geo::BBox, session::Session};

#[derive(Default)]
pub struct Conn {
    /// Its event budget, when events are limited.
    events: Option<EventLimiter>,
    /// Its place under the connection caps, given back at disconnect.
    slot: Mutex<Option<Slot>>,
    session: Mutex<Option<Arc<Session>>>,
    subscriptions: Mutex<Subscriptions>,
    /// Its entry in the gateway's deadlines (auth timeout or session end,
    /// whichever applies now); only `Deadlines` reads or writes it.
    deadline: Mutex<Option<Key>>,
    /// Chat rooms joined (names inside the fleet).
    rooms: Mutex<HashSet<String>>,
    /// The (fleet, vehicle) this socket keeps online, once it has a vehicle session.
    presence: Mutex<Option<(String, String)>>,
    /// Ends when this socket's latest `locationupdate` is queued for the
    /// store: each update waits for the one before, so a socket's updates
    /// join their fleet's queue, and so reach the store, in the order they
    /// arrived (handlers otherwise run concurrently, and the store's
    /// compare-and-set would refuse the older of two as stale).
    last_update: Mutex<Option<oneshot::Receiver<()>>>,
    /// The span its handlers run in: its id, then fleet and role once it
    /// has a session (never its token).
    span: std::sync::OnceLock<tracing::Span>,
}

/// A place in a socket's queue: the end of the one before to wait for,
/// and the sender whose drop ends this one.
pub type Turn = (Option<oneshot::Receiver<()>>, oneshot::Sender<()>);

/// What one socket watches inside its fleet.
#[derive(Debug, Default)]
pub struct Subscriptions {
    pub whole_fleet: bool,
    pub vehicles: HashSet<String>,
    pub boxes: Vec<BBox>,
    /// Geofences whose events it watches (section 11).
    pub geofences: HashSet<String>,
    /// Whether this socket counts as a watcher of its fleet's relay channel.
    pub watching: bool,
}

impl Subscriptions {
    pub fn count(&self) -> usize {
        usize::from(self.whole_fleet) + self.vehicles.len() + self.boxes.len() + self.geofences.len()
    }

    /// After a subscription went: whether the socket stops watching its
    /// fleet's relay channel now (true once, with the last one).
    pub fn stops_watching(&mut self) -> bool {
        let stop = self.watching && self.count() == 0;
        if stop {
            self.watching = false;
        }
        stop
    }
}

impl Conn {
    pub fn new(events: Option<EventLimiter>, slot: Slot) -> Self {
        Self { events, slot: Mutex::new(Some(slot)), ..Self::default() }
    }

    /// Takes one event from the budget; false when it is spent.
    pub fn allow_event(&self) -> bool {
        self.events.as_ref().is_none_or(|l| l.check().is_ok())
    }

    pub fn release_slot(&self) {
        self.slot.lock_or_recover().take();
    }

    pub fn session(&self) -> Option<Arc<Session>> {
        self.session.lock_or_recover().clone()
    }

    pub fn set_session(&self, session: Arc<Session>) {
        self.record_session(&session);
        *self.session.lock_or_recover() = Some(session);
    }

    fn record_session(&self, session: &Session) {
        if let Some(span) = self.span.get() {
            span.record("fleet", session.fleet.as_str());
            span.record("role", session.role.as_str());
        }
    }

    /// Opens the socket's span (once; the socket id is final by then).
    pub fn open_span(&self, sid: impl std::fmt::Display) -> tracing::Span {
        let span = self
            .span
            .get_or_init(|| {
                tracing::info_span!("socket", sid = %sid, fleet = tracing::field::Empty, role = tracing::field::Empty)
            })
            .clone();
        if let Some(session) = self.session() {
            self.record_session(&session);
        }
        span
    }

    pub fn subscriptions(&self) -> MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock_or_recover()
    }

    pub fn rooms(&self) -> MutexGuard<'_, HashSet<String>> {
        self.rooms.lock_or_recover()
    }

    /// Records the vehicle this socket keeps online; false if it already keeps one.
    pub fn claim_presence(&self, fleet: &str, vehicle: &str) -> bool {
        let mut p = self.presence.lock_or_recover();
        if p.is_some() {
            return false;
        }
        *p = Some((fleet.to_owned(), vehicle.to_owned()));
        true
    }

    /// Takes the next place in this socket's queue of position updates:
    /// what to wait for first (the previous update's end), and the sender
    /// whose drop ends this one. Call it in arrival order.
    pub fn queue_update(&self) -> Turn {
        let (done, end) = oneshot::channel();
        (self.last_update.lock_or_recover().replace(end), done)
    }

    pub fn take_presence(&self) -> Option<(String, String)> {
        self.presence.lock_or_recover().take()
    }

    pub(super) fn take_deadline_key(&self) -> Option<Key> {
        self.deadline.lock_or_recover().take()
    }

    pub(super) fn set_deadline_key(&self, key: Key) {
        *self.deadline.lock_or_recover() = Some(key);
    }

    /// Forgets `key` if it is still this socket's (its entry expired).
    pub(super) fn forget_deadline_key(&self, key: Key) {
        let mut slot = self.deadline.lock_or_recover();
        if *slot == Some(key) {
            *slot = None;
        }
    }
}
