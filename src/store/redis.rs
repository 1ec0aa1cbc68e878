//! The shared store: sessions and positions in Redis, so any replica can
//! serve any client. The position compare-and-set, its TTL, the fleet index
//! and the announcement to other replicas happen in one Lua script: one
//! round trip per update, atomic across replicas.
//!
//! Key layout (`{fleet}` is a hash tag, so a fleet's keys share a slot on a
//! Redis Cluster and the script stays single-slot):
//! - `fg:{<fleet>}:pos:<vehicle>`: hash `t` (fix time), `p` (encoded event), TTL
//! - `fg:{<fleet>}:idx`: sorted set of vehicle ids scored by expiry (ms)
//! - `fg:{<fleet>}:positions`: the channel other replicas listen on
//! - `fg:session:<id>`: the session JSON, TTL until it expires

use std::{future::Future, time::Duration};

use async_trait::async_trait;
use deadpool_redis::{Pool, Runtime};
use redis::Script;

use super::{PutOutcome, Scope, Store, StoreError};
use crate::{ids::now_ms, position::Position, session::Session};

/// Longest a store call may take before the client is told `unavailable`.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

const PUT_POSITION: &str = r#"
local cur = redis.call('HGET', KEYS[1], 't')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then
  return 0
end
local ttl = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 't', ARGV[1], 'p', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call(ARGV[6], ARGV[7], ARGV[8] .. ' ' .. ARGV[2])
return 1
"#;

const POSITIONS: &str = r#"
local ids
if #ARGV > 2 then
  ids = {}
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
end
local out = {}
for _, id in ipairs(ids) do
  local p = redis.call('HGET', ARGV[2] .. id, 'p')
  if p then out[#out + 1] = p end
end
return out
"#;

/// Names of a fleet's keys and channel.
pub fn position_key(fleet: &str, vehicle: &str) -> String {
    format!("fg:{{{fleet}}}:pos:{vehicle}")
}

pub fn position_channel(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:positions")
}

fn index_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:idx")
}

fn session_key(id: &str) -> String {
    format!("fg:session:{id}")
}

pub struct RedisStore {
    pool: Pool,
    put_position: Script,
    positions: Script,
    location_ttl_ms: i64,
    /// Prefix of this replica's announcements, so it can skip its own.
    node_id: String,
    /// `PUBLISH`, or `SPUBLISH` on a cluster.
    publish_command: &'static str,
}

impl RedisStore {
    pub fn new(url: &str, pool_size: usize, location_ttl_secs: u64, node_id: String) -> Result<Self, String> {
        let mut cfg = deadpool_redis::Config::from_url(url);
        let mut pool_cfg = deadpool_redis::PoolConfig::new(pool_size.max(1));
        pool_cfg.timeouts.wait = Some(CALL_TIMEOUT);
        pool_cfg.timeouts.create = Some(CALL_TIMEOUT);
        pool_cfg.timeouts.recycle = Some(CALL_TIMEOUT);
        cfg.pool = Some(pool_cfg);
        let pool = cfg.create_pool(Some(Runtime::Tokio1)).map_err(|e| e.to_string())?;
        Ok(Self {
            pool,
            put_position: Script::new(PUT_POSITION),
            positions: Script::new(POSITIONS),
            location_ttl_ms: i64::try_from(location_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            node_id,
            publish_command: "PUBLISH",
        })
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, StoreError> {
        Ok(self.pool.get().await?)
    }
}

/// Bounds a store call so a hung Redis turns into `unavailable`, not a hung client.
async fn bounded<T>(f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(CALL_TIMEOUT, f).await.map_err(|_| StoreError::Timeout)?
}

#[async_trait]
impl Store for RedisStore {
    async fn put_position(&self, p: &Position, encoded: &str) -> Result<PutOutcome, StoreError> {
        bounded(async {
            let mut conn = self.conn().await?;
            let stored: i64 = self
                .put_position
                .key(position_key(&p.fleet, &p.vehicle_id))
                .key(index_key(&p.fleet))
                .arg(p.ts)
                .arg(encoded)
                .arg(self.location_ttl_ms)
                .arg(now_ms())
                .arg(&p.vehicle_id)
                .arg(self.publish_command)
                .arg(position_channel(&p.fleet))
                .arg(&self.node_id)
                .invoke_async(&mut conn)
                .await?;
            Ok(if stored == 1 { PutOutcome::Accepted } else { PutOutcome::Stale })
        })
        .await
    }

    async fn positions(&self, fleet: &str, scope: Scope<'_>) -> Result<Vec<String>, StoreError> {
        bounded(async {
            let mut conn = self.conn().await?;
            let mut call = self.positions.key(index_key(fleet));
            call.arg(now_ms()).arg(position_key(fleet, ""));
            if let Scope::Vehicles(ids) = scope {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                call.arg(ids);
            }
            Ok(call.invoke_async(&mut conn).await?)
        })
        .await
    }

    async fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        let json = serde_json::to_string(session).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let ttl_ms = u64::try_from(session.remaining_ms(now_ms())).unwrap_or(0).max(1);
        bounded(async {
            let mut conn = self.conn().await?;
            redis::cmd("SET")
                .arg(session_key(&session.session_id))
                .arg(json)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let raw: Option<String> = bounded(async {
            let mut conn = self.conn().await?;
            Ok(redis::cmd("GET").arg(session_key(id)).query_async(&mut conn).await?)
        })
        .await?;
        raw.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
    }

    async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        bounded(async {
            let mut conn = self.conn().await?;
            let n: i64 = redis::cmd("DEL").arg(session_key(id)).query_async(&mut conn).await?;
            Ok(n > 0)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        bounded(async {
            let mut conn = self.conn().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }
}
