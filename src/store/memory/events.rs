//! The event streams of the embedded store (see [`crate::store::events`]),
//! with the rules of the Redis version: a ring per fleet capped at
//! `FLEETGATE_EVENTS_MAX` (exactly; Redis trims whole nodes), the same ids
//! (`<ms>-<ordinal>`), and events appended under the store's lock in the same
//! step as the state they describe. Leases and cursors are plain maps.

use std::collections::{HashMap, VecDeque};

use async_trait::async_trait;

use super::MemoryStore;
use crate::{
    clock::now_ms,
    store::{
        StoreError,
        events::{self, Cursor, Event, EventKind, EventStream, Lease, Read, StreamId},
    },
};

#[derive(Default)]
struct Ring {
    events: VecDeque<Event>,
    /// The id of the last event appended (its sequence: its ordinal).
    last: StreamId,
}

/// Every fleet's stream, lease and cursor (part of the store's state).
#[derive(Default)]
pub(super) struct Streams {
    /// Events kept per fleet; 0: none.
    pub(super) max: usize,
    fleets: HashMap<String, Ring>,
    /// (fleet, name) → (holder, until when, ms).
    leases: HashMap<(String, String), (String, i64)>,
    /// (fleet, consumer) → cursor.
    cursors: HashMap<(String, String), Cursor>,
}

impl Streams {
    /// Appends one event to `fleet`'s stream at time `now` (also its `ts`);
    /// `data` is its JSON.
    pub(super) fn append(&mut self, fleet: &str, kind: EventKind, data: &str, now: i64) {
        if self.max == 0 {
            return;
        }
        let ring = match self.fleets.get_mut(fleet) {
            Some(ring) => ring,
            None => self.fleets.entry(fleet.to_owned()).or_default(),
        };
        let id = ring.last.next(now);
        ring.last = id;
        let json = events::encode(fleet, id, kind, now, data);
        ring.events.push_back(Event { id, ordinal: id.seq, kind, json });
        while ring.events.len() > self.max {
            ring.events.pop_front();
        }
        events::appended(kind, 1);
    }

    /// The newest event of `fleet`'s stream.
    pub(super) fn newest(&self, fleet: &str) -> Option<Cursor> {
        self.fleets.get(fleet).and_then(|r| r.events.back()).map(Event::cursor)
    }

    /// Sets `consumer`'s cursor (`None`: forgets it) and drops its lease,
    /// whoever holds it: for a consumer created or deleted.
    pub(super) fn reset(&mut self, fleet: &str, consumer: &str, cursor: Option<Cursor>) {
        let key = (fleet.to_owned(), consumer.to_owned());
        self.leases.remove(&key);
        match cursor {
            Some(c) => self.cursors.insert(key, c),
            None => self.cursors.remove(&key),
        };
    }

    fn lease_held(&self, fleet: &str, lease: Lease<'_>, now: i64) -> bool {
        self.leases
            .get(&(fleet.to_owned(), lease.name.to_owned()))
            .is_some_and(|(holder, until)| *until > now && holder == lease.holder)
    }
}

fn until(now: i64, ttl_ms: u64) -> i64 {
    now.saturating_add(i64::try_from(ttl_ms.max(1)).unwrap_or(i64::MAX))
}

#[async_trait]
impl EventStream for MemoryStore {
    fn enabled(&self) -> bool {
        self.retention.events_max > 0
    }

    async fn read(&self, fleet: &str, after: Option<Cursor>, count: usize) -> Result<Read, StoreError> {
        let state = self.lock();
        let Some(ring) = state.events.fleets.get(fleet) else { return Ok(Read::default()) };
        let start = after.map_or(0, |a| ring.events.partition_point(|e| e.id <= a.id));
        let events = ring.events.iter().skip(start).take(count).cloned().collect();
        Ok(Read::after(after, events))
    }

    async fn oldest(&self, fleet: &str) -> Result<Option<Cursor>, StoreError> {
        let state = self.lock();
        Ok(state.events.fleets.get(fleet).and_then(|r| r.events.front()).map(Event::cursor))
    }

    async fn newest(&self, fleet: &str) -> Result<Option<Cursor>, StoreError> {
        let state = self.lock();
        Ok(state.events.fleets.get(fleet).and_then(|r| r.events.back()).map(Event::cursor))
    }

    async fn fleets(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().events.fleets.keys().cloned().collect())
    }

    async fn acquire_lease(&self, fleet: &str, lease: Lease<'_>, ttl_ms: u64) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut state = self.lock();
        let key = (fleet.to_owned(), lease.name.to_owned());
        let free = state.events.leases.get(&key).is_none_or(|(holder, until)| *until <= now || holder == lease.holder);
        if free {
            state.events.leases.insert(key, (lease.holder.to_owned(), until(now, ttl_ms)));
        }
        Ok(free)
    }

    async fn renew_lease(&self, fleet: &str, lease: Lease<'_>, ttl_ms: u64) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut state = self.lock();
        if !state.events.lease_held(fleet, lease, now) {
            return Ok(false);
        }
        state
            .events
            .leases
            .insert((fleet.to_owned(), lease.name.to_owned()), (lease.holder.to_owned(), until(now, ttl_ms)));
        Ok(true)
    }

    async fn release_lease(&self, fleet: &str, lease: Lease<'_>) -> Result<bool, StoreError> {
        let mut state = self.lock();
        if !state.events.lease_held(fleet, lease, now_ms()) {
            return Ok(false);
        }
        state.events.leases.remove(&(fleet.to_owned(), lease.name.to_owned()));
        Ok(true)
    }

    async fn cursor(&self, fleet: &str, consumer: &str) -> Result<Option<Cursor>, StoreError> {
        Ok(self.lock().events.cursors.get(&(fleet.to_owned(), consumer.to_owned())).copied())
    }

    async fn delete_cursor(&self, fleet: &str, consumer: &str) -> Result<(), StoreError> {
        self.lock().events.cursors.remove(&(fleet.to_owned(), consumer.to_owned()));
        Ok(())
    }

    async fn set_cursor(
        &self,
        fleet: &str,
        consumer: &str,
        cursor: Cursor,
        lease: Option<Lease<'_>>,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        if lease.is_some_and(|l| !state.events.lease_held(fleet, l, now_ms())) {
            return Ok(false);
        }
        state.events.cursors.insert((fleet.to_owned(), consumer.to_owned()), cursor);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(max: usize) -> Streams {
        Streams { max, ..Streams::default() }
    }

    #[test]
    fn a_ring_keeps_exactly_its_cap_with_increasing_ids() {
        let mut s = streams(3);
        for (i, now) in [10, 10, 9, 12, 12].into_iter().enumerate() {
            s.append("f", EventKind::Chat, &format!(r#"{{"n":{i}}}"#), now);
        }
        let ring = &s.fleets["f"];
        let ids: Vec<String> = ring.events.iter().map(|e| e.id.to_string()).collect();
        // The clock stepped back at the third: it stays on the last id's time.
        assert_eq!(ids, ["10-3", "12-4", "12-5"]);
        assert!(ring.events.iter().all(|e| e.ordinal == e.id.seq));
        assert_eq!(ring.events[0].json, r#"{"id":"f/10-3","type":"chat","fleet":"f","ts":9,"data":{"n":2}}"#);
    }

    #[test]
    fn without_a_cap_nothing_is_kept() {
        let mut s = streams(0);
        s.append("f", EventKind::Position, "{}", 1);
        assert!(s.fleets.is_empty());
    }

    #[test]
    fn leases_lapse() {
        let mut s = streams(1);
        let a = Lease { name: "w", holder: "a" };
        s.leases.insert(("f".into(), "w".into()), ("a".into(), 100));
        assert!(s.lease_held("f", a, 99));
        assert!(!s.lease_held("f", a, 100));
        assert!(!s.lease_held("f", Lease { name: "w", holder: "b" }, 99));
        assert!(!s.lease_held("g", a, 99));
    }
}
