//! The event streams in Redis (see [`crate::store::events`]): the fleet's
//! stream `fg:{<fleet>}:events` (field `event` the event's JSON; entry id
//! `<ms>-<ordinal>`) and the ordinal of its last event
//! `fg:{<fleet>}:events:n`, written by the scripts of the store (their
//! shared part is [`APPEND_LUA`]) and read here; leases `fg:{<fleet>}:lease:<name>` (the
//! holder, with a TTL) and cursors `fg:{<fleet>}:cursor:<consumer>`
//! (`<ms>-<seq> <ordinal>`), in the fleet's slot; and the set
//! `fg:events:fleets` of fleets that have had events.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use redis::Script;

use super::{
    RedisStore,
    keys::{EVENT_FLEETS, cursor_key, lease_key, stream_key},
};
use crate::lock::MutexExt;
use crate::{
    metrics::StoreOp,
    store::{
        StoreError,
        events::{Cursor, Event, EventKind, EventStream, Lease, Read, StreamId},
    },
};

/// How often a replica that keeps appending to a fleet's stream lists the
/// fleet again (should the set have been lost).
const NOTE_EVERY: Duration = Duration::from_secs(600);

/// The part of the scripts that appends events, prepended to each script that
/// writes some. KEYS, ARGV and reply: `lua/events_append.lua`.
pub const APPEND_LUA: &str = include_str!("lua/events_append.lua");

/// Takes or extends a lease. KEYS, ARGV and reply: `lua/events_acquire.lua`.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/events_acquire.lua")));

/// Extends a lease its holder still holds. KEYS, ARGV and reply: `lua/events_renew.lua`.
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/events_renew.lua")));

/// Gives a lease up. KEYS, ARGV and reply: `lua/events_release.lua`.
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/events_release.lua")));

/// Writes a cursor, under its lease. KEYS, ARGV and reply: `lua/events_set_cursor.lua`.
static SET_CURSOR: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/events_set_cursor.lua")));

/// The fleets this replica listed in [`EVENT_FLEETS`], and when.
#[derive(Default)]
pub(super) struct Noted(Mutex<HashMap<String, Instant>>);

impl RedisStore {
    /// Counts (and lists the fleet of) `n` events a script call appended.
    pub(super) async fn events_appended(&self, fleet: &str, kind: EventKind, n: u64) {
        if self.retention.events_max == 0 || n == 0 {
            return;
        }
        crate::store::events::appended(kind, n);
        self.note_fleet(fleet).await;
    }

    /// Lists `fleet` among those with events, in the background, unless
    /// this replica did so lately. A failure is retried with the fleet's
    /// next event.
    pub(super) async fn note_fleet(&self, fleet: &str) {
        if self.retention.events_max == 0 {
            return;
        }
        {
            let mut noted = self.noted.0.lock_or_recover();
            if noted.get(fleet).is_some_and(|at| at.elapsed() < NOTE_EVERY) {
                return;
            }
            noted.insert(fleet.to_owned(), Instant::now());
        }
        let Ok(mut conn) = self.conn().await else { return };
        let (fleet, noted) = (fleet.to_owned(), self.noted.clone());
        tokio::spawn(async move {
            let mut sadd = redis::cmd("SADD");
            let add = sadd.arg(EVENT_FLEETS).arg(&fleet).query_async::<()>(&mut conn);
            let added = tokio::time::timeout(super::call::CALL_TIMEOUT, add).await;
            if !matches!(added, Ok(Ok(()))) {
                tracing::debug!(fleet, "fleet not listed among those with events; retried with its next event");
                noted.0.lock_or_recover().remove(&fleet);
            }
        });
    }

    async fn lease_call(
        &self,
        script: &Script,
        fleet: &str,
        lease: Lease<'_>,
        ttl: Option<u64>,
    ) -> Result<bool, StoreError> {
        let key = lease_key(fleet, lease.name);
        self.bounded(StoreOp::Events, || async {
            let mut conn = self.conn().await?;
            let mut call = script.key(&key);
            call.arg(lease.holder);
            if let Some(ttl) = ttl {
                call.arg(ttl.max(1));
            }
            let held: i64 = call.invoke_async(&mut conn).await?;
            Ok(held == 1)
        })
        .await
    }

    /// One end of a fleet's stream (`XRANGE`/`XREVRANGE … COUNT 1`).
    async fn end(&self, fleet: &str, command: &str) -> Result<Option<Cursor>, StoreError> {
        let (from, to) = if command == "XRANGE" { ("-", "+") } else { ("+", "-") };
        Ok(self.range(fleet, command, from, to, 1).await?.first().map(Event::cursor))
    }

    async fn range(
        &self,
        fleet: &str,
        command: &str,
        from: &str,
        to: &str,
        count: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let key = stream_key(fleet);
        let entries: Vec<(String, Vec<String>)> = self
            .bounded(StoreOp::Events, || async {
                let mut conn = self.conn().await?;
                Ok(redis::cmd(command)
                    .arg(&key)
                    .arg(from)
                    .arg(to)
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("event stream entry: {what}"));
        entries
            .into_iter()
            .map(|(id, fields)| {
                let id = StreamId::parse(&id).ok_or_else(|| corrupt("id"))?;
                let json = fields.chunks(2).find_map(|kv| match kv {
                    [k, v] if k == "event" => Some(v.clone()),
                    _ => None,
                });
                Event::from_stored(id, json.ok_or_else(|| corrupt("fields"))?).ok_or_else(|| corrupt("event"))
            })
            .collect()
    }
}

#[async_trait]
impl EventStream for RedisStore {
    fn enabled(&self) -> bool {
        self.retention.events_max > 0
    }

    async fn read(&self, fleet: &str, after: Option<Cursor>, count: usize) -> Result<Read, StoreError> {
        if count == 0 {
            return Ok(Read::default());
        }
        let from = after.map_or_else(|| "-".to_owned(), |a| format!("({}", a.id));
        let events = self.range(fleet, "XRANGE", &from, "+", count).await?;
        Ok(Read::after(after, events))
    }

    async fn oldest(&self, fleet: &str) -> Result<Option<Cursor>, StoreError> {
        self.end(fleet, "XRANGE").await
    }

    async fn newest(&self, fleet: &str) -> Result<Option<Cursor>, StoreError> {
        self.end(fleet, "XREVRANGE").await
    }

    async fn fleets(&self) -> Result<Vec<String>, StoreError> {
        self.bounded(StoreOp::Events, || async {
            let mut conn = self.conn().await?;
            Ok(redis::cmd("SMEMBERS").arg(EVENT_FLEETS).query_async(&mut conn).await?)
        })
        .await
    }

    async fn acquire_lease(&self, fleet: &str, lease: Lease<'_>, ttl_ms: u64) -> Result<bool, StoreError> {
        self.lease_call(&ACQUIRE, fleet, lease, Some(ttl_ms)).await
    }

    async fn renew_lease(&self, fleet: &str, lease: Lease<'_>, ttl_ms: u64) -> Result<bool, StoreError> {
        self.lease_call(&RENEW, fleet, lease, Some(ttl_ms)).await
    }

    async fn release_lease(&self, fleet: &str, lease: Lease<'_>) -> Result<bool, StoreError> {
        self.lease_call(&RELEASE, fleet, lease, None).await
    }

    async fn cursor(&self, fleet: &str, consumer: &str) -> Result<Option<Cursor>, StoreError> {
        let key = cursor_key(fleet, consumer);
        let raw: Option<String> = self
            .bounded(StoreOp::Events, || async {
                let mut conn = self.conn().await?;
                Ok(redis::cmd("GET").arg(&key).query_async(&mut conn).await?)
            })
            .await?;
        raw.map(|s| Cursor::decode(&s).ok_or_else(|| StoreError::Corrupt(format!("cursor {s}")))).transpose()
    }

    async fn delete_cursor(&self, fleet: &str, consumer: &str) -> Result<(), StoreError> {
        let key = cursor_key(fleet, consumer);
        self.bounded(StoreOp::Events, || async {
            let mut conn = self.conn().await?;
            Ok(redis::cmd("DEL").arg(&key).query_async::<()>(&mut conn).await?)
        })
        .await
    }

    async fn set_cursor(
        &self,
        fleet: &str,
        consumer: &str,
        cursor: Cursor,
        lease: Option<Lease<'_>>,
    ) -> Result<bool, StoreError> {
        let (key, encoded) = (cursor_key(fleet, consumer), cursor.encode());
        self.bounded(StoreOp::Events, || async {
            let mut conn = self.conn().await?;
            let mut call = SET_CURSOR.key(&key);
            call.arg(&encoded);
            if let Some(lease) = lease {
                call.key(lease_key(fleet, lease.name)).arg(lease.holder);
            }
            let written: i64 = call.invoke_async(&mut conn).await?;
            Ok(written == 1)
        })
        .await
    }
}
