//! Connection state recovery in Redis (see [`crate::store::recovery`]):
//! a socket's record is a hash `fg:{<fleet>}:rsock:<pid>` (`h` its
//! holder, `s` its state) with a TTL; the fleet's log is the capped stream
//! `fg:{<fleet>}:recovery` (field `e`). Every key of a call shares the
//! fleet's slot, so each call is one script or command on a cluster too.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::RedisStore;
use crate::{
    metrics::StoreOp,
    store::{
        StoreError,
        recovery::{LogId, Missed, RecoveryStore, SocketRecord},
    },
};

fn socket_key(fleet: &str, pid: &str) -> String {
    format!("fg:{{{fleet}}}:rsock:{pid}")
}

fn log_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:recovery")
}

/// ARGV: holder, state, ttl, claim (`1`). Returns 1 when written.
static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[4] ~= '1' and redis.call('HGET', KEYS[1], 'h') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'h', ARGV[1], 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#,
    )
});

/// KEYS: records; ARGV: ttl, then each record's holder.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'h') == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
return #KEYS
"#,
    )
});

/// ARGV: now (ms), entry, max, ttl. The id is on the replica's clock, like
/// positions' offsets (their `receivedAt`), so both order alike; when the
/// log already holds a later id Redis picks the next one. Returns the id.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ok, id = pcall(redis.call, 'XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[1] .. '-*', 'e', ARGV[2])
if not ok then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '*', 'e', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return id
"#,
    )
});

/// ARGV: after (`<ms>-<seq>`), max. Returns `{trimmed (0/1), id, entry, ...}`:
/// trimmed when an entry after `after` was deleted (the cap) or more than
/// `max` follow it. A log that does not exist lost nothing: it lives longer
/// than the recovery window after its last append.
static AFTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local function later(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' and later(info[i + 1], ARGV[1]) then return {1} end
end
local max = tonumber(ARGV[2])
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', max + 1)
if #entries > max then return {1} end
local out = {0}
for _, e in ipairs(entries) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2][2]
end
return out
"#,
    )
});

#[async_trait]
impl RecoveryStore for RedisStore {
    async fn save_socket(
        &self,
        fleet: &str,
        pid: &str,
        record: &SocketRecord,
        ttl_ms: i64,
        claim: bool,
    ) -> Result<bool, StoreError> {
        let key = socket_key(fleet, pid);
        self.bounded(StoreOp::Recovery, || async {
            let mut conn = self.conn().await?;
            let written: i64 = SAVE
                .key(&key)
                .arg(&record.holder)
                .arg(&record.state)
                .arg(ttl_ms.max(1))
                .arg(if claim { "1" } else { "0" })
                .invoke_async(&mut conn)
                .await?;
            Ok(written == 1)
        })
        .await
    }

    async fn touch_sockets(&self, fleet: &str, records: &[(String, String)], ttl_ms: i64) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.bounded(StoreOp::Recovery, || async {
            let mut conn = self.conn().await?;
            let mut call = TOUCH.prepare_invoke();
            call.arg(ttl_ms.max(1));
            for (pid, holder) in records {
                call.key(socket_key(fleet, pid)).arg(holder);
            }
            call.invoke_async::<i64>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    async fn socket(&self, fleet: &str, pid: &str) -> Result<Option<SocketRecord>, StoreError> {
        let key = socket_key(fleet, pid);
        let (holder, state): (Option<String>, Option<String>) = self
            .bounded(StoreOp::Recovery, || async {
                let mut conn = self.conn().await?;
                Ok(redis::cmd("HMGET").arg(&key).arg("h").arg("s").query_async(&mut conn).await?)
            })
            .await?;
        Ok(holder.zip(state).map(|(holder, state)| SocketRecord { holder, state }))
    }

    async fn append_event(
        &self,
        fleet: &str,
        now_ms: i64,
        entry: &str,
        max: u64,
        ttl_ms: i64,
    ) -> Result<LogId, StoreError> {
        let key = log_key(fleet);
        let id: String = self
            .bounded(StoreOp::Recovery, || async {
                let mut conn = self.conn().await?;
                Ok(APPEND
                    .key(&key)
                    .arg(now_ms.max(0))
                    .arg(entry)
                    .arg(max.max(1))
                    .arg(ttl_ms.max(1))
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
        LogId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("stream id {id}")))
    }

    async fn events_after(&self, fleet: &str, after: LogId, max: u64) -> Result<Missed, StoreError> {
        let key = log_key(fleet);
        let reply: Vec<redis::Value> = self
            .bounded(StoreOp::Recovery, || async {
                let mut conn = self.conn().await?;
                Ok(AFTER.key(&key).arg(after.to_string()).arg(max.max(1)).invoke_async(&mut conn).await?)
            })
            .await?;
        let corrupt = || StoreError::Corrupt("recovery log reply".to_owned());
        let mut items = reply.into_iter();
        let trimmed: i64 = redis::from_redis_value(items.next().ok_or_else(corrupt)?).map_err(|_| corrupt())?;
        if trimmed == 1 {
            return Ok(Missed::Trimmed);
        }
        let mut events = Vec::new();
        while let (Some(id), Some(entry)) = (items.next(), items.next()) {
            let id: String = redis::from_redis_value(id).map_err(|_| corrupt())?;
            let entry: String = redis::from_redis_value(entry).map_err(|_| corrupt())?;
            events.push((LogId::parse(&id).ok_or_else(corrupt)?, entry));
        }
        Ok(Missed::Events(events))
    }
}
