//! Webhook registrations in Redis (see [`crate::store::webhooks`]): the
//! hash `fg:{<fleet>}:webhooks` and, in the same slot, each webhook's
//! cursor and lease (`redis::events`' keys), written together by one
//! script; and the set `fg:webhooks:fleets`.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::{
    RedisStore,
    keys::{WEBHOOK_FLEETS, cursor_key, lease_key, stream_key, webhooks_key},
};
use crate::{
    metrics::StoreOp,
    store::{
        StoreError,
        webhooks::{self, WebhookStore, WebhookWrite},
    },
};

/// Registers or replaces a webhook. KEYS, ARGV and reply: `lua/webhooks_put.lua`.
static PUT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/webhooks_put.lua")));

/// Removes a webhook with its cursor and lease. KEYS, ARGV and reply: `lua/webhooks_delete.lua`.
static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/webhooks_delete.lua")));

#[async_trait]
impl WebhookStore for RedisStore {
    async fn put_webhook(&self, fleet: &str, id: &str, record: &str, max: usize) -> Result<WebhookWrite, StoreError> {
        self.bounded(StoreOp::Webhooks, || async {
            let mut conn = self.conn().await?;
            Ok(redis::cmd("SADD").arg(WEBHOOK_FLEETS).arg(fleet).query_async::<()>(&mut conn).await?)
        })
        .await?;
        let name = webhooks::consumer(id);
        let keys = [webhooks_key(fleet), stream_key(fleet), cursor_key(fleet, &name), lease_key(fleet, &name)];
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
        let keys = [webhooks_key(fleet), cursor_key(fleet, &name), lease_key(fleet, &name)];
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
        let key = webhooks_key(fleet);
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
            Ok(redis::cmd("SMEMBERS").arg(WEBHOOK_FLEETS).query_async(&mut conn).await?)
        })
        .await
    }
}
