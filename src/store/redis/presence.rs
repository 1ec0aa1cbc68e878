//! Presence in Redis: which replicas hold a vehicle's socket (claims that
//! lapse unless refreshed), which vehicles are online, and the sweep that
//! takes stale ones offline; each change appends its `vehicle_online` or
//! `vehicle_offline` event in the same script call.

use std::{sync::LazyLock, time::Duration};

use redis::Script;

use super::{
    RedisStore,
    keys::{PRESENCE_FLEETS, conns_key, counter_key, presence_key, stream_key},
    with_events,
};
use crate::{
    clock::now_ms,
    metrics::StoreOp,
    store::{Offline, StoreError, events::EventKind},
};

/// Longest the sweep waits for one fleet, so that one unreachable shard
/// leaves time for the others within the sweep's own bound.
const FLEET_SWEEP_TIMEOUT: Duration = Duration::from_millis(1500);

/// A vehicle's socket on a replica. KEYS, ARGV and reply: `lua/vehicle_connected.lua`.
static VEHICLE_CONNECTED: LazyLock<Script> = LazyLock::new(|| with_events(include_str!("lua/vehicle_connected.lua")));

/// A vehicle's last socket on a replica is gone. KEYS, ARGV and reply:
/// `lua/vehicle_disconnected.lua`.
static VEHICLE_DISCONNECTED: LazyLock<Script> =
    LazyLock::new(|| with_events(include_str!("lua/vehicle_disconnected.lua")));

/// A fleet's vehicles gone stale, or whose replicas stopped refreshing
/// them. KEYS, ARGV and reply: `lua/sweep_presence.lua`.
static SWEEP_PRESENCE: LazyLock<Script> = LazyLock::new(|| with_events(include_str!("lua/sweep_presence.lua")));

pub(super) async fn connected(store: &RedisStore, fleet: &str, vehicle: &str, node: &str) -> Result<bool, StoreError> {
    let became = store
        .bounded(StoreOp::VehicleConnected, || async {
            let mut conn = store.conn().await?;
            // The sweep's list of fleets lives on one shard of a cluster;
            // with that shard down the vehicle is still recorded (its
            // fleet is listed again by the next vehicle to connect).
            if let Err(e) = redis::cmd("SADD").arg(PRESENCE_FLEETS).arg(fleet).query_async::<()>(&mut conn).await {
                tracing::debug!(error = %e, "fleet not listed for the presence sweep");
            }
            let became: i64 = VEHICLE_CONNECTED
                .key(conns_key(fleet, vehicle))
                .key(presence_key(fleet))
                .key(stream_key(fleet))
                .key(counter_key(fleet))
                .arg(node)
                .arg(now_ms())
                .arg(store.retention.presence_ttl_ms)
                .arg(store.retention.stale_after_ms)
                .arg(vehicle)
                .arg(store.retention.events_max)
                .arg(fleet)
                .invoke_async(&mut conn)
                .await?;
            Ok(became == 1)
        })
        .await?;
    if became {
        store.events_appended(fleet, EventKind::VehicleOnline, 1).await;
    }
    Ok(became)
}

pub(super) async fn disconnected(
    store: &RedisStore,
    fleet: &str,
    vehicle: &str,
    node: &str,
) -> Result<Option<i64>, StoreError> {
    let last_seen = store
        .bounded(StoreOp::VehicleDisconnected, || async {
            let mut conn = store.conn().await?;
            let last_seen: i64 = VEHICLE_DISCONNECTED
                .key(conns_key(fleet, vehicle))
                .key(presence_key(fleet))
                .key(stream_key(fleet))
                .key(counter_key(fleet))
                .arg(node)
                .arg(now_ms())
                .arg(store.retention.stale_after_ms)
                .arg(vehicle)
                .arg(store.retention.events_max)
                .arg(fleet)
                .invoke_async(&mut conn)
                .await?;
            Ok((last_seen >= 0).then_some(last_seen))
        })
        .await?;
    if last_seen.is_some() {
        store.events_appended(fleet, EventKind::VehicleOffline, 1).await;
    }
    Ok(last_seen)
}

pub(super) async fn refresh(store: &RedisStore, node: &str, vehicles: &[(String, String)]) -> Result<(), StoreError> {
    if vehicles.is_empty() {
        return Ok(());
    }
    let ttl = store.retention.presence_ttl_ms;
    let until = now_ms() + ttl;
    // One pipeline on one Redis; on a cluster, one per fleet (a
    // pipeline may not cross slots), sent together.
    let mut pipes: std::collections::BTreeMap<&str, redis::Pipeline> = std::collections::BTreeMap::new();
    for (fleet, vehicle) in vehicles {
        let pipe = pipes.entry(if store.cluster { fleet.as_str() } else { "" }).or_default();
        let key = conns_key(fleet, vehicle);
        pipe.cmd("ZADD").arg(&key).arg(until).arg(node).ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(2 * ttl).ignore();
    }
    store
        .bounded(StoreOp::RefreshPresence, || async {
            let calls = pipes.values().map(|pipe| async move {
                let mut conn = store.conn().await?;
                pipe.query_async::<()>(&mut conn).await?;
                Ok::<_, StoreError>(())
            });
            futures_util::future::try_join_all(calls).await?;
            Ok(())
        })
        .await
}

pub(super) async fn sweep(store: &RedisStore) -> Result<Vec<Offline>, StoreError> {
    // Dead replicas are looked for every 5th sweep; staleness every sweep.
    let n = store.sweeps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let check_conns = if n.is_multiple_of(5) { "1" } else { "0" };
    store
        .bounded(StoreOp::SweepPresence, || async {
            let mut conn = store.conn().await?;
            let fleets: Vec<String> = redis::cmd("SMEMBERS").arg(PRESENCE_FLEETS).query_async(&mut conn).await?;
            // Fleets are swept side by side, each within its own bound: on a
            // cluster with one shard down (or stalled) the fleets of the
            // others are still swept.
            let sweeps = fleets.into_iter().map(|fleet| async move {
                let mut conn = store.conn().await?;
                let mut invocation = SWEEP_PRESENCE.key(presence_key(&fleet));
                invocation
                    .key(stream_key(&fleet))
                    .key(counter_key(&fleet))
                    .arg(now_ms())
                    .arg(store.retention.stale_after_ms)
                    .arg(conns_key(&fleet, ""))
                    .arg(check_conns)
                    .arg(store.retention.events_max)
                    .arg(&fleet);
                let call = invocation.invoke_async::<Vec<String>>(&mut conn);
                let flat = tokio::time::timeout(FLEET_SWEEP_TIMEOUT, call).await.map_err(|_| StoreError::Timeout)??;
                Ok::<_, StoreError>((fleet, flat))
            });
            let mut out = Vec::new();
            let (mut swept, mut failure) = (0usize, None);
            for result in futures_util::future::join_all(sweeps).await {
                let (fleet, flat) = match result {
                    Ok(r) => r,
                    Err(e) => {
                        failure = Some(e);
                        continue;
                    }
                };
                swept += 1;
                store.events_appended(&fleet, EventKind::VehicleOffline, (flat.len() / 2) as u64).await;
                for pair in flat.chunks(2) {
                    if let [vehicle, last_seen] = pair {
                        out.push(Offline {
                            fleet: fleet.clone(),
                            vehicle: vehicle.clone(),
                            last_seen: last_seen.parse::<f64>().map(|f| f as i64).unwrap_or(0),
                        });
                    }
                }
            }
            match failure {
                Some(e) if swept == 0 => Err(e),
                Some(e) => {
                    tracing::debug!(error = %e, swept, "some fleets were not swept");
                    Ok(out)
                }
                None => Ok(out),
            }
        })
        .await
}
