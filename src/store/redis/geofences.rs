//! Geofences in Redis (section 11): each fleet's Features in a hash with
//! a version every change bumps, and per geofence the set of vehicles
//! inside (the crossings themselves are decided in the position script).

use std::sync::LazyLock;

use redis::{Script, Value};

use super::{
    RedisStore,
    keys::{geofence_inside_key, geofence_version_key, geofences_key, position_key},
};
use crate::{
    metrics::StoreOp,
    store::{FenceSet, FenceWrite, StoreError},
};

/// Creates or replaces a geofence, within the fleet's cap. KEYS, ARGV and
/// reply: `lua/put_geofence.lua`.
static PUT_GEOFENCE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/put_geofence.lua")));

/// Deletes a geofence and takes it out of the inside vehicles' sets. KEYS,
/// ARGV and reply: `lua/delete_geofence.lua`.
static DELETE_GEOFENCE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/delete_geofence.lua")));

/// A fleet's geofences with their version. KEYS, ARGV and reply: `lua/geofences.lua`.
static GEOFENCES: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/geofences.lua")));

/// One geofence and who is inside it. KEYS, ARGV and reply: `lua/geofence.lua`.
static GEOFENCE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/geofence.lua")));

pub(super) async fn put(
    store: &RedisStore,
    fleet: &str,
    id: &str,
    feature: &str,
    max: usize,
) -> Result<FenceWrite, StoreError> {
    store
        .bounded(StoreOp::PutGeofence, || async {
            let mut conn = store.conn().await?;
            let reply: Value = PUT_GEOFENCE
                .key(geofences_key(fleet))
                .key(geofence_version_key(fleet))
                .arg(id)
                .arg(feature)
                .arg(max)
                .invoke_async(&mut conn)
                .await?;
            Ok(match redis::from_redis_value_ref::<(i64, u64)>(&reply) {
                Ok((created, version)) => FenceWrite::Stored { created: created == 1, version },
                Err(_) => FenceWrite::Full,
            })
        })
        .await
}

pub(super) async fn delete(store: &RedisStore, fleet: &str, id: &str) -> Result<bool, StoreError> {
    store
        .bounded(StoreOp::DeleteGeofence, || async {
            let mut conn = store.conn().await?;
            let existed: i64 = DELETE_GEOFENCE
                .key(geofences_key(fleet))
                .key(geofence_version_key(fleet))
                .key(geofence_inside_key(fleet, id))
                .arg(id)
                .arg(position_key(fleet, ""))
                .invoke_async(&mut conn)
                .await?;
            Ok(existed == 1)
        })
        .await
}

pub(super) async fn all(store: &RedisStore, fleet: &str) -> Result<FenceSet, StoreError> {
    let (version, flat): (String, Vec<String>) = store
        .bounded(StoreOp::Geofences, || async {
            let mut conn = store.conn().await?;
            Ok(GEOFENCES.key(geofences_key(fleet)).key(geofence_version_key(fleet)).invoke_async(&mut conn).await?)
        })
        .await?;
    let version = version.parse().map_err(|_| StoreError::Corrupt("geofence version".into()))?;
    let features = flat.chunks(2).filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone()))).collect();
    Ok(FenceSet { version, features })
}

pub(super) async fn one(
    store: &RedisStore,
    fleet: &str,
    id: &str,
) -> Result<Option<(String, Vec<String>)>, StoreError> {
    let (feature, mut inside): (Option<String>, Vec<String>) = store
        .bounded(StoreOp::Geofence, || async {
            let mut conn = store.conn().await?;
            Ok(GEOFENCE
                .key(geofences_key(fleet))
                .key(geofence_inside_key(fleet, id))
                .arg(id)
                .arg(position_key(fleet, ""))
                .invoke_async(&mut conn)
                .await?)
        })
        .await?;
    inside.sort();
    Ok(feature.map(|f| (f, inside)))
}

pub(super) async fn versions(store: &RedisStore, fleets: &[String]) -> Result<Vec<u64>, StoreError> {
    store
        .bounded(StoreOp::GeofenceVersions, || async {
            // One GET per fleet, side by side: on a cluster each fleet's
            // version lives on its own shard.
            let gets = fleets.iter().map(|fleet| async move {
                let mut conn = store.conn().await?;
                let v: Option<u64> = redis::cmd("GET").arg(geofence_version_key(fleet)).query_async(&mut conn).await?;
                Ok::<_, StoreError>(v.unwrap_or(0))
            });
            futures_util::future::try_join_all(gets).await
        })
        .await
}
