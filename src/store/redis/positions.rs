//! Positions in Redis: a batch of one fleet's updates stored, announced
//! to the other replicas and appended to the fleet's event stream in one
//! script call (`lua/put_positions.lua`), and the last-known positions read
//! back (`lua/positions.lua`).

use std::sync::{LazyLock, atomic::Ordering};

use redis::{Script, Value};

use super::{
    RedisStore,
    call::{CALIBRATION_MAX_RTT, CALL_TIMEOUT, FENCE_MARGIN},
    keys::{
        conns_key, counter_key, geofence_inside_key, geofence_version_key, index_key, position_key, presence_key,
        stream_key,
    },
    with_events,
};
use crate::{
    clock::now_ms,
    metrics::StoreOp,
    replication::wire::position_channel,
    store::{Crossing, PositionWrite, PutOutcome, Scope, StoreError, events::EventKind},
};

/// One batch in this many also drops the expired members of its fleet's
/// index. Readers skip expired members anyway and the index expires with
/// its fleet's last write, so pruning on every write only cost a command.
const PRUNE_EVERY: u64 = 16;

/// The position compare-and-set of a batch of one fleet's updates, fenced,
/// and their announcement. KEYS, ARGV and reply: `lua/put_positions.lua`.
static PUT_POSITIONS: LazyLock<Script> = LazyLock::new(|| with_events(include_str!("lua/put_positions.lua")));

/// A fleet's last-known positions, all or some vehicles'. KEYS, ARGV and
/// reply: `lua/positions.lua`. Read-only, so a Sentinel-mode connection
/// sends it without waiting for replicas.
pub(super) static POSITIONS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/positions.lua")));

pub(super) async fn put(
    store: &RedisStore,
    fleet: &str,
    writes: &[PositionWrite<'_>],
) -> Vec<Result<PutOutcome, StoreError>> {
    let mut outcomes: Vec<Option<Result<PutOutcome, StoreError>>> = vec![None; writes.len()];
    // The newest sender gives up CALL_TIMEOUT after it began: no
    // answer may come later than that, and none of the writes may be
    // answered `unavailable` before its own fence has passed (all fences
    // fall before that time).
    let newest = writes.iter().map(|w| w.started).max().unwrap_or_else(std::time::Instant::now);
    let give_up = tokio::time::Instant::from_std(newest + CALL_TIMEOUT);
    let fence = CALL_TIMEOUT - FENCE_MARGIN;
    let mut todo: Vec<usize> = (0..writes.len()).collect();
    let mut retried = false;
    let (index, presence, channel) = (index_key(fleet), presence_key(fleet), position_channel(fleet));
    let (stream, counter) = (stream_key(fleet), counter_key(fleet));
    while !todo.is_empty() {
        let sent = std::time::Instant::now();
        let sent_ms = now_ms();
        let offset = store.clock_offset_ms.load(Ordering::Relaxed);
        let prune = store.batches.fetch_add(1, Ordering::Relaxed).is_multiple_of(PRUNE_EVERY);
        let mut call = PUT_POSITIONS.key(&index);
        call.key(&presence)
            .key(&stream)
            .key(&counter)
            .arg(store.retention.location_ttl_ms)
            .arg(sent_ms)
            .arg(store.retention.stale_after_ms)
            .arg(&channel)
            .arg(&store.node_id)
            .arg(if prune { "1" } else { "0" })
            .arg(store.retention.events_max)
            .arg(fleet);
        let mut sending = Vec::with_capacity(todo.len());
        let mut inside = Vec::with_capacity(todo.len());
        for i in todo.drain(..) {
            let w = &writes[i];
            // A write whose fence passed while it queued is not sent.
            let Some(left) = fence.checked_sub(w.started.elapsed()).filter(|l| !l.is_zero()) else {
                outcomes[i] = Some(Err(StoreError::Timeout));
                continue;
            };
            let deadline = sent_ms + offset + i64::try_from(left.as_millis()).unwrap_or(0);
            call.key(position_key(fleet, &w.position.vehicle_id))
                .key(conns_key(fleet, &w.position.vehicle_id))
                .arg(w.position.ts)
                .arg(w.encoded)
                .arg(&w.position.vehicle_id)
                .arg(deadline);
            sending.push(i);
            inside.push(w.inside.join(" "));
        }
        if sending.is_empty() {
            break;
        }
        let version = writes.first().map_or(0, |w| w.fences_version);
        call.arg(version).arg(geofence_version_key(fleet)).arg(geofence_inside_key(fleet, "")).arg(&inside);
        let reply: Result<Vec<Value>, StoreError> = store
            .bounded_until(StoreOp::PutPosition, give_up, || async {
                let mut conn = store.conn().await?;
                Ok(call.invoke_async(&mut conn).await?)
            })
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                sending.into_iter().for_each(|i| outcomes[i] = Some(Err(e.clone())));
                break;
            }
        };
        let rtt = sent.elapsed();
        let int = |k: usize| reply.get(k).and_then(|v| redis::from_redis_value_ref::<i64>(v).ok());
        if let Some(redis_now) = int(0) {
            store.calibrate(redis_now, sent_ms, rtt);
        }
        let m = sending.len();
        for (k, i) in sending.into_iter().enumerate() {
            outcomes[i] = match int(k + 1) {
                Some(0) => Some(Ok(PutOutcome::Stale)),
                Some(n) if n > 0 => {
                    let crossed = reply.get(1 + m + k).and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
                    let crossings = crossed.map_or_else(Vec::new, |c| Crossing::parse_list(&c));
                    Some(Ok(PutOutcome::Accepted { back_online: n == 2, crossings }))
                }
                Some(-2) => Some(Err(StoreError::FencesChanged)),
                // A refusal that is back quickly says the offset was off
                // (clocks apart), not that the call was late: nothing
                // was written, so try once more with the offset just
                // learnt.
                Some(-1) if !retried && rtt <= CALIBRATION_MAX_RTT => {
                    todo.push(i);
                    None
                }
                _ => Some(Err(StoreError::Timeout)),
            };
        }
        retried = true;
    }
    let outcomes: Vec<_> = outcomes.into_iter().map(|o| o.unwrap_or(Err(StoreError::Timeout))).collect();
    count_position_events(store, fleet, &outcomes).await;
    outcomes
}

pub(super) async fn read(store: &RedisStore, fleet: &str, scope: Scope<'_>) -> Result<Vec<String>, StoreError> {
    store
        .bounded(StoreOp::Positions, || async {
            let mut conn = store.conn().await?;
            let mut call = POSITIONS.key(index_key(fleet));
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

/// [`RedisStore::events_appended`] for the events of a batch's accepted positions.
async fn count_position_events(store: &RedisStore, fleet: &str, outcomes: &[Result<PutOutcome, StoreError>]) {
    let (mut positions, mut online, mut crossings) = (0, 0, 0);
    for outcome in outcomes {
        if let Ok(PutOutcome::Accepted { back_online, crossings: c }) = outcome {
            positions += 1;
            online += u64::from(*back_online);
            crossings += c.len() as u64;
        }
    }
    store.events_appended(fleet, EventKind::VehicleOnline, online).await;
    store.events_appended(fleet, EventKind::Position, positions).await;
    store.events_appended(fleet, EventKind::Geofence, crossings).await;
}
