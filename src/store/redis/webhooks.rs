//! Webhook registrations in Redis (see [`crate::store::webhooks`]): the
//! hash `fg:{<fleet>}:webhooks` and, in the same slot, each webhook's
//! cursor and lease (`redis::events`' keys), written together by one
//! script; and the set `fg:webhooks:fleets`.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::RedisStore;
use crate::{
    metrics::StoreOp,
    store::{
        StoreError,
        webhooks::{self, WebhookStore, WebhookWrite},
    },
};

fn hash_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:webhooks")
}

/// Fleets that have had a webhook. It lives in one slot of a cluster, so
/// the script cannot write it: a registration adds its fleet first, and
/// nothing removes one (a fleet whose webhooks are all gone costs each
/// replica one `HGETALL` per discovery round).
const FLEETS: &str = "fg:webhooks:fleets";

/// KEYS: the fleet's webhooks, its stream, the webhook's cursor and
/// lease; ARGV: id, record, max. 1 created, 0 replaced, -1 full.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
local cursor = '0-0 0'
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if last then
  -- A stream id's sequence is the event's ordinal.
  cursor = last[1] .. ' ' .. string.match(last[1], '-(%d+)$')
end
redis.call('SET', KEYS[3], cursor)
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
    )
});

/// KEYS: the fleet's webhooks, the webhook's cursor and lease; ARGV: id.
/// 1 when it existed.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local existed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return existed
"#,
    )
});

#[async_trait]
impl WebhookStore for RedisStore {
    async fn put_webhook(&self, fleet: &str, id: &str, record: &str, max: usize) -> Result<WebhookWrite, StoreError> {
        self.bounded(StoreOp::Webhooks, || async {
            let mut conn = self.conn().await?;
            Ok(redis::cmd("SADD").arg(FLEETS).arg(fleet).query_async::<()>(&mut conn).await?)
        })
        .await?;
        let name = webhooks::consumer(id);
        let keys =
            [hash_key(fleet), super::events::stream_key(fleet), cursor_key(fleet, &name), lease_key(fleet, &name)];
        let outcome: i64 = self
            .bounded(StoreOp::Webhooks, || async {
                let mut conn = self.conn().await?;
                let mut call = PUT.prepare_invoke();
                for key in &keys {
                    call.key(key);
                }
                Ok(call.arg(id).arg(record).arg(max).invoke_async(&mut conn).await?)
            })
            .await?;
        Ok(match outcome {
            -1 => WebhookWrite::Full,
            created => WebhookWrite::Stored { created: created == 1 },
        })
    }

    async fn delete_webhook(&self, fleet: &str, id: &str) -> Result<bool, StoreError> {
        let name = webhooks::consumer(id);
        let keys = [hash_key(fleet), cursor_key(fleet, &name), lease_key(fleet, &name)];
        let existed: i64 = self
            .bounded(StoreOp::Webhooks, || async {
                let mut conn = self.conn().await?;
                let mut call = DELETE.prepare_invoke();
                for key in &keys {
                    call.key(key);
                }
                Ok(call.arg(id).invoke_async(&mut conn).await?)
            })
            .await?;
        Ok(existed == 1)
    }

    async fn webhooks(&self, fleet: &str) -> Result<Vec<(String, String)>, StoreError> {
        let key = hash_key(fleet);
        self.bounded(StoreOp::Webhooks, || async {
            let mut conn = self.conn().await?;
            let all: std::collections::HashMap<String, String> =
                redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await?;
            Ok(all.into_iter().collect())
        })
        .await
    }

    async fn webhook_fleets(&self) -> Result<Vec<String>, StoreError> {
        self.bounded(StoreOp::Webhooks, || async {
            let mut conn = self.conn().await?;
            Ok(redis::cmd("SMEMBERS").arg(FLEETS).query_async(&mut conn).await?)
        })
        .await
    }
}

fn cursor_key(fleet: &str, consumer: &str) -> String {
    super::events::cursor_key(fleet, consumer)
}

fn lease_key(fleet: &str, name: &str) -> String {
    super::events::lease_key(fleet, name)
}
