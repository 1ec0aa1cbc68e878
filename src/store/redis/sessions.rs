//! Sessions in Redis: `fg:session:<id>`, the session's JSON with a TTL
//! until it expires.

use super::{RedisStore, keys::session_key};
use crate::{clock::now_ms, metrics::StoreOp, session::Session, store::StoreError};

pub(super) async fn create(store: &RedisStore, session: &Session) -> Result<(), StoreError> {
    let json = serde_json::to_string(session).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let ttl_ms = u64::try_from(session.remaining_ms(now_ms())).unwrap_or(0).max(1);
    store
        .bounded(StoreOp::CreateSession, || async {
            let mut conn = store.conn().await?;
            redis::cmd("SET")
                .arg(session_key(&session.session_id))
                .arg(&json)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
}

pub(super) async fn get(store: &RedisStore, id: &str) -> Result<Option<Session>, StoreError> {
    let raw: Option<String> = store
        .bounded(StoreOp::GetSession, || async {
            let mut conn = store.conn().await?;
            Ok(redis::cmd("GET").arg(session_key(id)).query_async(&mut conn).await?)
        })
        .await?;
    raw.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
}

pub(super) async fn delete(store: &RedisStore, id: &str) -> Result<bool, StoreError> {
    store
        .bounded(StoreOp::DeleteSession, || async {
            let mut conn = store.conn().await?;
            let n: i64 = redis::cmd("DEL").arg(session_key(id)).query_async(&mut conn).await?;
            Ok(n > 0)
        })
        .await
}
