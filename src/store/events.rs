//! The per-fleet event stream (contract section 12): every `position`,
//! `vehicle_online`, `vehicle_offline`, `geofence` and `chat` event,
//! appended by the store in the same atomic step that stores the state it
//! describes, and read back here by the outputs (webhooks, NATS) through
//! [`EventStream`].
//!
//! An event's place in its fleet's stream is a [`StreamId`] `<ms>-<seq>`
//! (in Redis: the entry id of `fg:{<fleet>}:events`, given explicitly to
//! `XADD`), and its contract `id` is `<fleet>/<ms>-<seq>`: the fleet makes
//! it unique across fleets, the stream id makes it increase within one.
//! The store picks the stream id itself, so the id is known before the
//! entry is written and can sit inside the event's JSON: `ms` is the time
//! of the step (or the last event's, should the clock have stepped back),
//! `seq` the event's ordinal in its fleet's stream (1, 2, …), so that a
//! reader that fell behind the cap knows exactly how many events it missed
//! ([`Read::skipped`]).
//!
//! Also here, for outputs that must run on one replica at a time and
//! resume after a restart: named [leases](EventStream::acquire_lease) with
//! a lifetime, and per-consumer [cursors](EventStream::cursor). Both live
//! beside the fleet's stream (Redis: `fg:{<fleet>}:lease:<name>`,
//! `fg:{<fleet>}:cursor:<consumer>`), in its cluster slot.

use std::fmt;

use async_trait::async_trait;

use super::StoreError;

/// The kind of an event: its `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Position,
    VehicleOnline,
    VehicleOffline,
    Geofence,
    Chat,
}

impl EventKind {
    pub const ALL: &'static [Self] =
        &[Self::Position, Self::VehicleOnline, Self::VehicleOffline, Self::Geofence, Self::Chat];

    /// The event's `type` (also the `type` label of the events metric).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Position => "position",
            Self::VehicleOnline => "vehicle_online",
            Self::VehicleOffline => "vehicle_offline",
            Self::Geofence => "geofence",
            Self::Chat => "chat",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

impl From<EventKind> for metrics::SharedString {
    fn from(kind: EventKind) -> Self {
        metrics::SharedString::const_str(kind.as_str())
    }
}

/// An event's place in its fleet's stream, `<ms>-<seq>`, ordered by time
/// then sequence (a Redis stream id).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// Reads `<ms>-<seq>` (both at most 20 digits); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = super::parse_ms_seq(s)?;
        Some(Self { ms, seq })
    }

    /// The id of the event after the one at `self`, at time `now_ms`: the
    /// next ordinal, on the clock unless it is behind `self` (so ids
    /// increase even when the clock steps back). The Redis scripts do the same.
    pub fn next(self, now_ms: i64) -> Self {
        let now = u64::try_from(now_ms).unwrap_or(0);
        Self { ms: now.max(self.ms), seq: self.seq + 1 }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Where a reader is in a fleet's stream: the last event it is done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub id: StreamId,
    /// That event's ordinal (1 for a stream's first event; in this version
    /// also the id's sequence).
    pub ordinal: u64,
}

impl Cursor {
    /// As a cursor is stored: `<ms>-<seq> <ordinal>`.
    pub fn encode(&self) -> String {
        format!("{} {}", self.id, self.ordinal)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (id, ordinal) = s.split_once(' ')?;
        Some(Self { id: StreamId::parse(id)?, ordinal: ordinal.parse().ok()? })
    }
}

/// One event as read from a fleet's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: StreamId,
    pub ordinal: u64,
    pub kind: EventKind,
    /// The event object `{ id, type, fleet, ts, data }`, as stored: the
    /// bytes a webhook POSTs or NATS publishes.
    pub json: String,
}

impl Event {
    /// A stored entry: its stream id (whose sequence is its ordinal) and
    /// JSON. `None` when the JSON is not an event (a foreign entry).
    pub fn from_stored(id: StreamId, json: String) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        let kind = EventKind::parse(&serde_json::from_str::<Head<'_>>(&json).ok()?.kind)?;
        Some(Self { id, ordinal: id.seq, kind, json })
    }

    /// The cursor of a reader done with this event.
    pub fn cursor(&self) -> Cursor {
        Cursor { id: self.id, ordinal: self.ordinal }
    }
}

/// The events after a cursor, and how many before them the reader missed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    /// Oldest first.
    pub events: Vec<Event>,
    /// Events between the cursor and the first of `events` that the cap
    /// dropped before they were read (0 when none). Counted from the
    /// ordinals; a stream that was deleted and began again counts the new
    /// stream's events before the first one.
    pub skipped: u64,
}

impl Read {
    /// `events` read after `after`, with the gap to the first counted.
    pub fn after(after: Option<Cursor>, events: Vec<Event>) -> Self {
        let skipped = match (after, events.first()) {
            (Some(after), Some(first)) if first.ordinal > after.ordinal => first.ordinal - after.ordinal - 1,
            (Some(_), Some(first)) => first.ordinal.saturating_sub(1),
            _ => 0,
        };
        Self { events, skipped }
    }
}

/// A lease one holder has on a name in a fleet, for writes made only
/// while holding it ([`EventStream::set_cursor`]).
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub name: &'a str,
    /// Unique per process and purpose (e.g. the replica's node id).
    pub holder: &'a str,
}

/// What outputs read: a fleet's events, its leases and cursors.
#[async_trait]
pub trait EventStream: Send + Sync {
    /// Whether events are kept at all (`FLEETGATE_EVENTS_MAX` > 0).
    fn enabled(&self) -> bool;

    /// Up to `count` events of `fleet` after `after` (from the oldest kept
    /// when `None`), oldest first, with how many the reader missed.
    async fn read(&self, fleet: &str, after: Option<Cursor>, count: usize) -> Result<Read, StoreError>;

    /// The oldest event still kept; `None` when the stream is empty.
    async fn oldest(&self, fleet: &str) -> Result<Option<Cursor>, StoreError>;

    /// The newest event; `None` when the stream is empty. A reader that
    /// starts here gets every event from now on.
    async fn newest(&self, fleet: &str) -> Result<Option<Cursor>, StoreError>;

    /// The fleets that have had events (in no particular order). A fleet
    /// is listed within moments of its first event on each replica; a
    /// listed fleet's stream may have gone since.
    async fn fleets(&self) -> Result<Vec<String>, StoreError>;

    /// Takes `lease` for `ttl_ms` when nobody holds it, or extends it when
    /// its holder already does. Whether `lease.holder` holds it now.
    async fn acquire_lease(&self, fleet: &str, lease: Lease<'_>, ttl_ms: u64) -> Result<bool, StoreError>;

    /// Extends `lease` to `ttl_ms` from now only while its holder holds it.
    /// Whether it does.
    async fn renew_lease(&self, fleet: &str, lease: Lease<'_>, ttl_ms: u64) -> Result<bool, StoreError>;

    /// Gives `lease` up if its holder holds it. Whether it did.
    async fn release_lease(&self, fleet: &str, lease: Lease<'_>) -> Result<bool, StoreError>;

    /// The saved cursor of `consumer` in `fleet`'s stream.
    async fn cursor(&self, fleet: &str, consumer: &str) -> Result<Option<Cursor>, StoreError>;

    /// Forgets `consumer`'s cursor (a consumer that is gone for good).
    async fn delete_cursor(&self, fleet: &str, consumer: &str) -> Result<(), StoreError>;

    /// Saves `consumer`'s cursor, only while `lease` is held (`None`:
    /// unconditionally). Whether it was saved.
    async fn set_cursor(
        &self,
        fleet: &str,
        consumer: &str,
        cursor: Cursor,
        lease: Option<Lease<'_>>,
    ) -> Result<bool, StoreError>;
}

/// The event object `{ id, type, fleet, ts, data }` around `data` (JSON).
/// Fleet ids follow the id grammar, so they need no escaping; the Redis
/// scripts build the same bytes.
pub fn encode(fleet: &str, id: StreamId, kind: EventKind, ts: i64, data: &str) -> String {
    format!(r#"{{"id":"{fleet}/{id}","type":"{}","fleet":"{fleet}","ts":{ts},"data":{data}}}"#, kind.as_str())
}

/// The data of `vehicle_online` (section 5.4).
pub fn online_data(fleet: &str, vehicle: &str, ts: i64) -> String {
    format!(r#"{{"fleet":"{fleet}","vehicleId":"{vehicle}","ts":{ts}}}"#)
}

/// The data of `vehicle_offline` (section 5.4).
pub fn offline_data(fleet: &str, vehicle: &str, last_seen: i64) -> String {
    format!(r#"{{"fleet":"{fleet}","vehicleId":"{vehicle}","lastSeen":{last_seen}}}"#)
}

/// Counts events a store call appended.
pub fn appended(kind: EventKind, n: u64) {
    if n > 0 {
        metrics::counter!(crate::metrics::names::EVENTS_APPENDED, "type" => kind).increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_increase_even_when_the_clock_does_not() {
        let a = StreamId::parse("1732200000000-7").unwrap();
        assert_eq!(a.next(1732200000005), StreamId { ms: 1732200000005, seq: 8 });
        assert_eq!(a.next(1732200000000), StreamId { ms: 1732200000000, seq: 8 });
        assert_eq!(a.next(1), StreamId { ms: 1732200000000, seq: 8 }, "the clock stepped back");
        assert_eq!(StreamId::default().next(-5), StreamId { ms: 0, seq: 1 });
        assert_eq!(StreamId::default().next(9), StreamId { ms: 9, seq: 1 }, "a stream's first event");
        assert_eq!(a.to_string(), "1732200000000-7");
        for bad in ["", "1", "-1", "1-", "a-1", "1-2-3", "123456789012345678901-0"] {
            assert_eq!(StreamId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn cursors_read_back() {
        let c = Cursor { id: StreamId { ms: 5, seq: 2 }, ordinal: 9 };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("5-2"), None);
        assert_eq!(Cursor::decode("5-2 x"), None);
    }

    #[test]
    fn events_are_json_with_the_contracts_fields() {
        let data = online_data("acme", "bus-1", 7);
        let json = encode("acme", StreamId { ms: 10, seq: 3 }, EventKind::VehicleOnline, 11, &data);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({ "id": "acme/10-3", "type": "vehicle_online", "fleet": "acme", "ts": 11,
                "data": { "fleet": "acme", "vehicleId": "bus-1", "ts": 7 } })
        );
        let event = Event::from_stored(StreamId { ms: 10, seq: 3 }, json).unwrap();
        assert_eq!((event.kind, event.ordinal), (EventKind::VehicleOnline, 3));
        assert!(Event::from_stored(StreamId::default(), r#"{"type":"other"}"#.into()).is_none());
        assert!(Event::from_stored(StreamId::default(), "not json".into()).is_none());
    }

    #[test]
    fn skipped_counts_the_gap_to_the_first_event_read() {
        let event = |ordinal| Event {
            id: StreamId { ms: ordinal, seq: 0 },
            ordinal,
            kind: EventKind::Chat,
            json: String::new(),
        };
        let at = |ordinal| Some(Cursor { id: StreamId { ms: ordinal, seq: 0 }, ordinal });
        assert_eq!(Read::after(at(4), vec![event(5), event(6)]).skipped, 0);
        assert_eq!(Read::after(at(4), vec![event(9)]).skipped, 4);
        assert_eq!(Read::after(None, vec![event(9)]).skipped, 0);
        assert_eq!(Read::after(at(4), vec![]).skipped, 0);
        // The stream began again: its events before the first read are missed.
        assert_eq!(Read::after(at(40), vec![event(3)]).skipped, 2);
    }
}
