//! Connection state recovery in Redis (see [`crate::store::recovery`]):
//! a socket's record is a hash `fg:{<fleet>}:rsock:<pid>` (`h` its
//! holder, `s` its state) with a TTL; the fleet's log is the capped stream
//! `fg:{<fleet>}:recovery` (field `e`). Every key of a call shares the
//! fleet's slot, so each call is one script or command on a cluster too.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::{
    RedisStore,
    keys::{recovery_log_key, recovery_socket_key},
};
use crate::{
    metrics::StoreOp,
    store::{
        StoreError,
        recovery::{LogId, Missed, RecoveryStore, SocketRecord},
    },
};

/// Writes a socket's record, if this connection holds it (or claims it). KEYS, ARGV and reply: `lua/recovery_save.lua`.
static SAVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/recovery_save.lua")));

/// Extends the records their holders still hold. KEYS, ARGV and reply: `lua/recovery_touch.lua`.
static TOUCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/recovery_touch.lua")));

/// Appends an entry to the fleet's recovery log. KEYS, ARGV and reply: `lua/recovery_append.lua`.
static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/recovery_append.lua")));

/// The log's entries after an id, or that some were trimmed. KEYS, ARGV and reply: `lua/recovery_after.lua`.
static AFTER: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/recovery_after.lua")));

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
        let key = recovery_socket_key(fleet, pid);
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
                call.key(recovery_socket_key(fleet, pid)).arg(holder);
            }
            call.invoke_async::<i64>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    async fn socket(&self, fleet: &str, pid: &str) -> Result<Option<SocketRecord>, StoreError> {
        let key = recovery_socket_key(fleet, pid);
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
        let key = recovery_log_key(fleet);
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
        let key = recovery_log_key(fleet);
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
