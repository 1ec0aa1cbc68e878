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

use super::RedisStore;
use crate::lock::MutexExt;
use crate::{
    metrics::StoreOp,
    store::{
        StoreError,
        events::{Cursor, Event, EventStream, Lease, Read, StreamId},
    },
};

/// The fleet's event stream.
pub fn stream_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:events")
}

/// The ordinal of the fleet's last event (see [`APPEND_LUA`]).
pub fn counter_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:events:n")
}

pub(super) fn lease_key(fleet: &str, name: &str) -> String {
    format!("fg:{{{fleet}}}:lease:{name}")
}

pub(super) fn cursor_key(fleet: &str, consumer: &str) -> String {
    format!("fg:{{{fleet}}}:cursor:{consumer}")
}

/// Fleets that have had events. It lives in one slot of a cluster, so the
/// scripts (single-slot) cannot add to it: replicas add a fleet when they
/// first append to its stream, and again every [`NOTE_EVERY`], in the
/// background.
const FLEETS: &str = "fg:events:fleets";

/// How often a replica that keeps appending to a fleet's stream lists the
/// fleet again (should the set have been lost).
const NOTE_EVERY: Duration = Duration::from_secs(600);

/// The part of the scripts that appends events, prepended to each script
/// that writes some. `ev_open(stream, counter, cap, fleet[, now])` starts
/// a call's events (nothing is read: the common path costs one `XADD` per
/// event and one `INCR` per call); each `ev_add(type, data)` appends one
/// with an explicit id `<ms>-<n>`: `ms` the call's Redis time, `n` the
/// event's ordinal in its fleet's stream, from the counter `:events:n`
/// (the stream itself cannot tell its last id without reading an entry,
/// which costs more than the `XADD`). So the id is known before the entry
/// is written and sits in its JSON, and it increases per fleet. Should the
/// clock have stepped back behind the stream's last id (or the counter
/// been lost), `XADD` refuses the id without writing, and the event takes
/// the last id's time and next ordinal instead. `ev_close()` saves the
/// ordinal of a call that appended several. `MAXLEN ~` trims whole nodes
/// only, cheaply. With a cap of 0 nothing is read or written. The JSON is
/// `store::events::encode`'s.
pub const APPEND_LUA: &str = r#"
local ev_key, ev_count, ev_cap, ev_ms, ev_head, ev_mid, ev_n, ev_dirty
local function ev_open(key, count, cap, fleet, now)
  if cap == '0' then return end
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  ev_key, ev_count, ev_cap, ev_ms = key, count, cap, now
  ev_head = '{"id":"' .. fleet .. '/'
  ev_mid = '","fleet":"' .. fleet .. '","ts":' .. string.format('%d', now) .. ',"data":'
end
local function ev_add(kind, data)
  if not ev_key then return end
  if ev_n then ev_n, ev_dirty = ev_n + 1, true else ev_n = redis.call('INCR', ev_count) end
  local id = string.format('%d-%d', ev_ms, ev_n)
  local r = redis.pcall('XADD', ev_key, 'MAXLEN', '~', ev_cap, id, 'event',
    ev_head .. id .. '","type":"' .. kind .. ev_mid .. data .. '}')
  if type(r) == 'table' and r.err then
    local last = redis.call('XREVRANGE', ev_key, '+', '-', 'COUNT', 1)[1]
    if not last then error(r) end
    local ms, seq = string.match(last[1], '^(%d+)-(%d+)$')
    ev_ms = math.max(ev_ms, tonumber(ms))
    if ev_n <= tonumber(seq) then ev_n, ev_dirty = tonumber(seq) + 1, true end
    id = string.format('%d-%d', ev_ms, ev_n)
    redis.call('XADD', ev_key, 'MAXLEN', '~', ev_cap, id, 'event',
      ev_head .. id .. '","type":"' .. kind .. ev_mid .. data .. '}')
  end
end
local function ev_close()
  if ev_dirty then redis.call('SET', ev_count, ev_n) end
end
"#;

/// KEYS: lease; ARGV: holder, ttl. 1 when the holder holds it now.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// KEYS: lease; ARGV: holder, ttl. 1 when extended.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#,
    )
});

/// KEYS: lease; ARGV: holder. 1 when given up.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#,
    )
});

/// KEYS: cursor, then the lease it is written under (if any); ARGV:
/// cursor, the lease's holder. 1 when written.
static SET_CURSOR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if KEYS[2] and redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// The fleets this replica listed in [`FLEETS`], and when.
#[derive(Default)]
pub(super) struct Noted(Mutex<HashMap<String, Instant>>);

impl RedisStore {
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
            let add = sadd.arg(FLEETS).arg(&fleet).query_async::<()>(&mut conn);
            let added = tokio::time::timeout(super::CALL_TIMEOUT, add).await;
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
            Ok(redis::cmd("SMEMBERS").arg(FLEETS).query_async(&mut conn).await?)
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
