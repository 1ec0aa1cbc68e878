//! The shared store: sessions and positions in Redis, so any replica can
//! serve any client. The position compare-and-set, its TTL, the fleet index
//! and the announcement to other replicas happen in one Lua script, called
//! once for a batch of one fleet's updates (see [`crate::gateway::publish`]):
//! one round trip per batch, atomic across replicas.
//!
//! Key layout (`{fleet}` is a hash tag, so a fleet's keys share a slot on a
//! Redis Cluster and the script stays single-slot):
//! - `fg:{<fleet>}:pos:<vehicle>`: hash `t` (fix time), `p` (encoded event), TTL
//! - `fg:{<fleet>}:idx`: sorted set of vehicle ids scored by expiry (ms)
//! - `fg:{<fleet>}:positions`: the sharded channel (`SPUBLISH`) other
//!   replicas listen on, in the fleet's slot like its keys (named, and its
//!   messages' format stated, in [`crate::replication::wire`])
//! - `fg:{<fleet>}:presence`: sorted set of online vehicles scored by when
//!   they go stale (ms)
//! - `fg:{<fleet>}:conns:<vehicle>`: sorted set of replicas holding a socket
//!   of the vehicle, scored by when that claim lapses unless refreshed
//! - `fg:{<fleet>}:room:<room>`: the room's history, a capped stream with a TTL
//! - `fg:{<fleet>}:geofences`: hash geofence id → its Feature JSON;
//!   `fg:{<fleet>}:geofences:version`: counter bumped by every change;
//!   `fg:{<fleet>}:fence-inside:<geofence>`: set of vehicles inside; the
//!   position hash's field `g` holds the geofences its fix is inside
//! - `fg:{<fleet>}:events`: the fleet's event stream (section 12), capped,
//!   appended to by the scripts that store what its events describe, and
//!   `fg:{<fleet>}:events:n` the ordinal of its last event;
//!   `fg:{<fleet>}:lease:<name>`, `fg:{<fleet>}:cursor:<consumer>`: its
//!   readers' leases and cursors; `fg:events:fleets`: set of fleets that
//!   have had events (`redis::events`)
//! - `fg:presence:fleets`: set of fleets that have had presence, for the sweep
//! - `fg:session:<id>`: the session JSON, TTL until it expires
//! - `fg:{<fleet>}:webhooks`: hash webhook id → its registration
//!   (`redis::webhooks`); `fg:webhooks:fleets`: set of fleets that have had one
//! - `fg:{<fleet>}:recovery`, `fg:{<fleet>}:rsock:<pid>`: connection state
//!   recovery's event log and socket records (`redis::recovery`)
//!
//! The same store runs on one Redis, on a Redis Cluster, or on the primary
//! Sentinel names (`Conn`): every script's keys share their fleet's slot,
//! and the one multi-key pipeline (presence refresh) is split per fleet on
//! a cluster.

mod events;
mod recovery;
mod webhooks;

use std::{future::Future, time::Duration};

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
};

use async_trait::async_trait;
use redis::{
    Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Script, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo},
};

use super::{
    ChatMessage, Crossing, FenceSet, FenceWrite, Offline, PositionWrite, PutOutcome, Retention, Scope, Store,
    StoreError, events::EventKind,
};
use crate::{
    ids::now_ms,
    metrics::{StoreOp, names},
    redis_target::{RedisMode, RedisTarget},
    redis_tls::RedisTls,
    replication::wire::position_channel,
    sentinel::{PrimaryConnection, PrimaryWatch},
    session::Session,
};

/// Longest a store call may take before the client is told `unavailable`.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long before the caller gives up a position write stops being
/// applied (see [`PUT_POSITIONS`]): room for the reply to travel back and
/// for the error of the clock offset estimate.
const FENCE_MARGIN: Duration = Duration::from_millis(500);

/// Longest the sweep waits for one fleet, so that one unreachable shard
/// leaves time for the others within the sweep's own bound.
const FLEET_SWEEP_TIMEOUT: Duration = Duration::from_millis(1500);

/// One batch in this many also drops the expired members of its fleet's
/// index. Readers skip expired members anyway and the index expires with
/// its fleet's last write, so pruning on every write only cost a command.
const PRUNE_EVERY: u64 = 16;

/// Replies slower than this round trip do not recalibrate the clock offset.
const CALIBRATION_MAX_RTT: Duration = Duration::from_millis(250);

/// The position compare-and-set of a batch of one fleet's updates, and
/// their announcement. Each update is fenced: one that reaches Redis after
/// its own deadline (on Redis's clock, set just before its sender gives up
/// and is answered `unavailable`) changes nothing. Without the fence, a
/// write that waited out a stalled Redis (paused, swapping, a partition
/// that heals) would still be applied and announced when Redis resumed: a
/// position stored and shown to watchers after its sender was told it was
/// not. Updates are applied in order, so two of one vehicle meet each
/// other's result. Those stored leave in ONE message on the fleet's
/// sharded channel, in the format of [`crate::replication::wire`].
///
/// Each accepted update's events are appended to the fleet's event stream
/// (section 12) in the same step, in the order sockets hear them: the
/// vehicle back online, its position (the encoded event as it is, as the
/// event's data), then its crossings. A fenced, stale or refused update
/// appends nothing.
///
/// KEYS: index, presence, event stream, its counter, then per update its
/// position key and conns key. ARGV: ttl, now (ms), stale-after, channel,
/// node id, prune (`1`: drop the index's expired members too), events cap,
/// fleet, then per update ts, event, vehicle, deadline; then the geofence
/// arguments (see the block in the script).
/// Returns `{redis_now_ms, outcome..., crossings...}` (outcome -1: past its
/// deadline, -2: refused, the geofences changed, 0: stale, 1: stored, 2:
/// stored and back online; crossings: per update `-<id>`/`+<id>` separated
/// by spaces, `""` when none); Redis's time calibrates the deadlines of
/// later calls.
const PUT_POSITIONS: &str = r#"
local t = redis.call('TIME')
local rnow = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local stale = tonumber(ARGV[3])
local out = {rnow}
local events = {}
local index = {}
-- Geofences (contract section 11) ----------------------------------------
-- ARGV after the updates': the fleet's geofence version the replica
-- tested these fixes against, the version's key, the prefix of the
-- per-geofence sets of who is inside, then per update the ids of the
-- geofences holding its fix (sorted, space separated). A call tested
-- against another version than the stored one is refused whole (-2)
-- before anything is written. An accepted update's set is diffed against
-- the one stored with its vehicle's position (field `g`): the crossings.
local gn = (#KEYS - 4) / 2
local ga = 8 + gn * 4
if (redis.call('GET', ARGV[ga + 2]) or '0') ~= ARGV[ga + 1] then
  local refused = {rnow}
  for i = 1, gn do refused[i + 1] = -2 end
  return refused
end
ev_open(KEYS[3], KEYS[4], ARGV[7], ARGV[8], rnow) -- events
local crossed = {}
for i = 1, gn do crossed[i] = '' end
local function cross(i, pos, vehicle)
  local now_in, was_in, after, before = {}, {}, {}, {}
  for id in string.gmatch(ARGV[ga + 3 + i], '[^ ]+') do now_in[id] = true; after[#after + 1] = id end
  local old = redis.call('HGET', pos, 'g')
  if old then for id in string.gmatch(old, '[^ ]+') do was_in[id] = true; before[#before + 1] = id end end
  if #after == 0 and #before == 0 then return end
  local c = {}
  for _, id in ipairs(before) do
    if not now_in[id] then c[#c + 1] = '-' .. id; redis.call('SREM', ARGV[ga + 3] .. id, vehicle) end
  end
  for _, id in ipairs(after) do
    if not was_in[id] then c[#c + 1] = '+' .. id; redis.call('SADD', ARGV[ga + 3] .. id, vehicle) end
  end
  redis.call('HSET', pos, 'g', ARGV[ga + 3 + i])
  crossed[i] = table.concat(c, ' ')
end
-- ------------------------------------------------------------------------
-- The events of accepted update i (section 12); the fix's lat and lon are
-- read from its encoded event, whose fields are fleetgate's own.
local function appended(i, a, vehicle, online)
  local head = '{"fleet":"' .. ARGV[8] .. '","vehicleId":"' .. vehicle .. '"'
  if online then ev_add('vehicle_online', head .. ',"ts":' .. ARGV[2] .. '}') end
  ev_add('position', ARGV[a + 2])
  if crossed[i] == '' then return end
  local lat = string.match(ARGV[a + 2], '"lat":([^,}]+)') or 'null'
  local lon = string.match(ARGV[a + 2], '"lon":([^,}]+)') or 'null'
  local fix = ',"ts":' .. ARGV[a + 1] .. ',"lat":' .. lat .. ',"lon":' .. lon .. '}'
  for c in string.gmatch(crossed[i], '[^ ]+') do
    local kind = string.sub(c, 1, 1) == '+' and 'enter' or 'exit'
    ev_add('geofence', head .. ',"geofence":"' .. string.sub(c, 2) .. '","kind":"' .. kind .. '"' .. fix)
  end
end
for i = 1, gn do
  local a = 8 + (i - 1) * 4
  local pos, conns = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local outcome = -1
  if rnow <= tonumber(ARGV[a + 4]) then
    local cur = redis.call('HGET', pos, 't')
    if cur and tonumber(cur) >= tonumber(ARGV[a + 1]) then
      outcome = 0
    else
      local vehicle = ARGV[a + 3]
      redis.call('HSET', pos, 't', ARGV[a + 1], 'p', ARGV[a + 2])
      redis.call('PEXPIRE', pos, ttl)
      index[#index + 1] = now + ttl
      index[#index + 1] = vehicle
      events[#events + 1] = ARGV[a + 2]
      cross(i, pos, vehicle) -- geofences
      if crossed[i] ~= '' then events[#events + 1] = 'G' .. crossed[i] end -- geofences
      outcome = 1
      if redis.call('ZCOUNT', conns, now, '+inf') > 0 then
        if not redis.call('ZSCORE', KEYS[2], vehicle) then outcome = 2 end
        redis.call('ZADD', KEYS[2], now + stale, vehicle)
      end
      appended(i, a, vehicle, outcome == 2) -- events
    end
  end
  out[i + 1] = outcome
end
if ARGV[6] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
if #events > 0 then
  redis.call('ZADD', KEYS[1], unpack(index))
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('SPUBLISH', ARGV[4], ARGV[5] .. ' ' .. table.concat(events, '\n'))
end
for i = 1, gn do out[#out + 1] = crossed[i] end -- geofences
ev_close() -- events
return out
"#;

/// Creates or replaces a geofence (KEYS: the fleet's geofences hash, its
/// version; ARGV: id, Feature JSON, the fleet's cap). Returns
/// `{created, version}`, or `-1` for a new id over the cap.
const PUT_GEOFENCE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
local created = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {created, redis.call('INCR', KEYS[2])}
"#;

/// Deletes a geofence (KEYS: geofences hash, version, its inside set;
/// ARGV: id, position key prefix) and takes it out of the stored sets of
/// the vehicles inside, so none gets an exit and a geofence created again
/// under this id starts empty. Returns whether it existed.
const DELETE_GEOFENCE: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
for _, v in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local pos = ARGV[2] .. v
  local g = redis.call('HGET', pos, 'g')
  if g then
    local keep = {}
    for id in string.gmatch(g, '[^ ]+') do if id ~= ARGV[1] then keep[#keep + 1] = id end end
    redis.call('HSET', pos, 'g', table.concat(keep, ' '))
  end
end
redis.call('DEL', KEYS[3])
return 1
"#;

/// A fleet's geofences with their version, read together (KEYS: hash, version).
const GEOFENCES: &str = r#"
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
"#;

/// One geofence and who is inside it (KEYS: hash, its inside set; ARGV:
/// id, position key prefix). Members whose position expired, or whose
/// stored set no longer holds the geofence, are dropped on the way.
const GEOFENCE: &str = r#"
local f = redis.call('HGET', KEYS[1], ARGV[1])
if not f then return {false, {}} end
local inside = {}
for _, v in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local g = redis.call('HGET', ARGV[2] .. v, 'g')
  local found = false
  if g then for id in string.gmatch(g, '[^ ]+') do if id == ARGV[1] then found = true end end end
  if found then inside[#inside + 1] = v else redis.call('SREM', KEYS[2], v) end
end
return {f, inside}
"#;

/// Appends a chat message to its room's capped stream, fenced like
/// [`PUT_POSITIONS`] (`ARGV[5]`: the deadline on Redis's clock), so a message
/// answered `unavailable` never lands in the history later, and its `chat`
/// event to the fleet's event stream. KEYS: room, event stream, its
/// counter; ARGV:
/// history cap, from, text, ts, deadline, history ttl, events cap, fleet,
/// the message's JSON after its id (`"room":…}`). Returns
/// `{id, redis_now_ms}`, or `{false, redis_now_ms}` past the deadline.
const APPEND_MESSAGE: &str = r#"
local t = redis.call('TIME')
local rnow = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if rnow > tonumber(ARGV[5]) then
  return {false, rnow}
end
ev_open(KEYS[2], KEYS[3], ARGV[7], ARGV[8], rnow)
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'from', ARGV[2], 'text', ARGV[3], 'ts', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
ev_add('chat', '{"id":"' .. id .. '",' .. ARGV[9])
return {id, rnow}
"#;

/// A vehicle's socket on a replica: KEYS conns, presence, event stream, its counter;
/// ARGV node, now, presence ttl, stale-after, vehicle, events cap, fleet.
/// 1 (and a `vehicle_online` event) when it became online.
const VEHICLE_CONNECTED: &str = r#"
local now = tonumber(ARGV[2])
ev_open(KEYS[3], KEYS[4], ARGV[6], ARGV[7])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
local s = redis.call('ZSCORE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[5])
if s and tonumber(s) > now then return 0 end
ev_add('vehicle_online', '{"fleet":"' .. ARGV[7] .. '","vehicleId":"' .. ARGV[5] .. '","ts":' .. ARGV[2] .. '}')
return 1
"#;

/// A vehicle's last socket on a replica is gone: KEYS conns, presence,
/// event stream, its counter; ARGV node, now, stale-after, vehicle,
/// events cap, fleet.
/// Its last-seen time (and a `vehicle_offline` event) when it became
/// offline, else negative.
const VEHICLE_DISCONNECTED: &str = r#"
local now = tonumber(ARGV[2])
ev_open(KEYS[3], KEYS[4], ARGV[5], ARGV[6])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) > 0 then return -2 end
local s = redis.call('ZSCORE', KEYS[2], ARGV[4])
if not s then return -1 end
redis.call('ZREM', KEYS[2], ARGV[4])
local last_seen = tonumber(s) - tonumber(ARGV[3])
ev_add('vehicle_offline',
  '{"fleet":"' .. ARGV[6] .. '","vehicleId":"' .. ARGV[4] .. '","lastSeen":' .. string.format('%d', last_seen) .. '}')
return last_seen
"#;

/// A fleet's vehicles gone stale (or, with ARGV[4] `1`, whose replicas
/// stopped refreshing them): KEYS presence, event stream, its counter; ARGV now,
/// stale-after, conns key prefix, check conns, events cap, fleet. Returns
/// `{vehicle, last seen, ...}`, each also a `vehicle_offline` event.
const SWEEP_PRESENCE: &str = r#"
local now = tonumber(ARGV[1])
local stale = tonumber(ARGV[2])
local out = {}
local members
if ARGV[4] == '1' then
  members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
else
  members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES')
end
for i = 1, #members, 2 do
  local v, score = members[i], tonumber(members[i + 1])
  local gone = score <= now
  if not gone then
    local conns = ARGV[3] .. v
    redis.call('ZREMRANGEBYSCORE', conns, '-inf', now)
    gone = redis.call('ZCARD', conns) == 0
  end
  if gone then
    if #out == 0 then ev_open(KEYS[2], KEYS[3], ARGV[5], ARGV[6]) end
    redis.call('ZREM', KEYS[1], v)
    out[#out + 1] = v
    out[#out + 1] = tostring(score - stale)
    ev_add('vehicle_offline',
      '{"fleet":"' .. ARGV[6] .. '","vehicleId":"' .. v .. '","lastSeen":' .. string.format('%d', score - stale) .. '}')
  end
end
ev_close()
return out
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

/// A script that appends events: [`events::APPEND_LUA`], then `body`.
fn with_events(body: &str) -> Script {
    Script::new(&format!("{}{body}", events::APPEND_LUA))
}

/// Names of a fleet's keys and channel.
pub fn position_key(fleet: &str, vehicle: &str) -> String {
    format!("fg:{{{fleet}}}:pos:{vehicle}")
}

fn index_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:idx")
}

fn presence_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:presence")
}

fn conns_key(fleet: &str, vehicle: &str) -> String {
    format!("fg:{{{fleet}}}:conns:{vehicle}")
}

fn geofences_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:geofences")
}

fn geofence_version_key(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:geofences:version")
}

fn geofence_inside_key(fleet: &str, geofence: &str) -> String {
    format!("fg:{{{fleet}}}:fence-inside:{geofence}")
}

fn room_key(fleet: &str, room: &str) -> String {
    format!("fg:{{{fleet}}}:room:{room}")
}

const PRESENCE_FLEETS: &str = "fg:presence:fleets";

fn session_key(id: &str) -> String {
    format!("fg:session:{id}")
}

/// A command connection: to one Redis, to a cluster (which routes each
/// command by its key's slot and follows the topology by itself), or to
/// a primary whose writes wait for replicas (Sentinel mode, or
/// `FLEETGATE_REDIS_WAIT_REPLICAS`).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Primary(PrimaryConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Primary(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Primary(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Primary(c) => c.get_db(),
        }
    }
}

/// The scripts of section 11's geofences.
struct GeofenceScripts {
    put: Script,
    delete: Script,
    all: Script,
    one: Script,
}

impl Default for GeofenceScripts {
    fn default() -> Self {
        Self {
            put: Script::new(PUT_GEOFENCE),
            delete: Script::new(DELETE_GEOFENCE),
            all: Script::new(GEOFENCES),
            one: Script::new(GEOFENCE),
        }
    }
}

pub struct RedisStore {
    /// Replaced whole when Sentinel names a new primary.
    connections: Arc<RwLock<Vec<Conn>>>,
    /// A pipeline may only carry keys of one slot on a cluster.
    cluster: bool,
    next: AtomicUsize,
    put_positions: Script,
    /// Batches sent since start; every [`PRUNE_EVERY`]th also prunes its
    /// fleet's index.
    batches: AtomicU64,
    append_message: Script,
    positions: Script,
    vehicle_connected: Script,
    vehicle_disconnected: Script,
    sweep_presence: Script,
    geofence_scripts: GeofenceScripts,
    retention: Retention,
    /// Sweeps since start; every few, the sweep also looks for dead replicas.
    sweeps: std::sync::atomic::AtomicU64,
    /// Prefix of this replica's announcements, so it can skip its own.
    node_id: String,
    /// Redis's clock minus ours, in ms, as last measured by a quick reply:
    /// the fence of a position write is a time on Redis's clock.
    clock_offset_ms: AtomicI64,
    /// The fleets this replica listed as having events.
    noted: Arc<events::Noted>,
}

impl RedisStore {
    /// Connections for `target`; in Sentinel mode, to the primary `primary`
    /// names, rebuilt each time it names another.
    pub fn new(
        target: &RedisTarget,
        pool_size: usize,
        retention: Retention,
        node_id: String,
        primary: Option<Arc<PrimaryWatch>>,
    ) -> Result<Self, String> {
        crate::metrics::preregister_redis();
        let positions = Script::new(POSITIONS);
        let read_scripts: Arc<[String]> = Arc::from([positions.get_hash().to_owned()]);
        let wait_replicas = target.wait_replicas;
        let waited = move |client: redis::Client, watch: Option<Arc<PrimaryWatch>>| {
            let managers = single_managers(client, pool_size)?;
            Ok::<_, String>(if wait_replicas == 0 && watch.is_none() {
                managers.into_iter().map(Conn::Single).collect::<Vec<_>>()
            } else {
                managers
                    .into_iter()
                    .map(|m| {
                        Conn::Primary(PrimaryConnection::new(m, watch.clone(), wait_replicas, read_scripts.clone()))
                    })
                    .collect()
            })
        };
        let connections = match (&target.mode, &primary) {
            (RedisMode::Single { url }, _) => waited(single_client(url, target.tls.as_ref())?, None)?,
            (RedisMode::Cluster { nodes, username, password }, _) => cluster_connections(
                nodes.iter().map(|n| n.url(target.tls.is_some())).collect(),
                target.tls.as_ref(),
                username.as_deref(),
                password.as_deref(),
                pool_size,
            )?,
            (RedisMode::Sentinel(_), Some(watch)) => waited(watch.current().client, Some(watch.clone()))?,
            (RedisMode::Sentinel(_), None) => return Err("sentinel mode without its primary watch".into()),
        };
        let connections = Arc::new(RwLock::new(connections));
        if let Some(watch) = primary {
            // A new primary: new connections; calls in flight on the old
            // ones finish (or fail) there.
            let (slots, mut changes) = (Arc::downgrade(&connections), watch.subscribe());
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    let client = changes.borrow_and_update().client.clone();
                    let Some(slots) = slots.upgrade() else { return };
                    match waited(client, Some(watch.clone())) {
                        Ok(fresh) => {
                            if let Ok(mut current) = slots.write() {
                                *current = fresh;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "connecting to the new redis primary failed"),
                    }
                }
            });
        }
        Ok(Self {
            connections,
            cluster: target.is_cluster(),
            next: AtomicUsize::new(0),
            put_positions: with_events(PUT_POSITIONS),
            batches: AtomicU64::new(0),
            append_message: with_events(APPEND_MESSAGE),
            positions,
            vehicle_connected: with_events(VEHICLE_CONNECTED),
            vehicle_disconnected: with_events(VEHICLE_DISCONNECTED),
            sweep_presence: with_events(SWEEP_PRESENCE),
            geofence_scripts: GeofenceScripts::default(),
            retention,
            sweeps: std::sync::atomic::AtomicU64::new(0),
            node_id,
            clock_offset_ms: AtomicI64::new(0),
            noted: Default::default(),
        })
    }

    /// Learns the clock offset from a reply stamped with Redis's time
    /// `redis_now`, to a call sent at `sent_ms` that took `rtt`.
    fn calibrate(&self, redis_now: i64, sent_ms: i64, rtt: Duration) {
        if rtt <= CALIBRATION_MAX_RTT {
            let half = i64::try_from(rtt.as_millis() / 2).unwrap_or(0);
            self.clock_offset_ms.store(redis_now - (sent_ms + half), Ordering::Relaxed);
        }
    }

    /// The next connection in turn. Each is multiplexed (any number of
    /// calls in flight, pipelined) and reconnects by itself, so taking one
    /// costs nothing: a checked-out pool connection cost a PING round trip
    /// per call.
    async fn conn(&self) -> Result<Conn, StoreError> {
        let connections = self.connections.read().map_err(|_| StoreError::Corrupt("connection pool".into()))?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % connections.len().max(1);
        connections.get(i).cloned().ok_or(StoreError::Timeout)
    }

    fn pool_len(&self) -> usize {
        self.connections.read().map_or(1, |c| c.len())
    }

    /// Makes one round trip on each kind of connection before serving, so
    /// that a TLS or authentication problem is a start-up error that says
    /// what to fix, not a stream of `unavailable` answers.
    pub async fn preflight(&self, target: &RedisTarget) -> Result<(), String> {
        let mut conn = self.conn().await.map_err(|e| e.to_string())?;
        let ping = async {
            match &mut conn {
                Conn::Cluster(c) => {
                    let all = RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::AllSucceeded),
                    ));
                    c.route_command(redis::cmd("PING"), all).await.map(|_| ())
                }
                c => redis::cmd("PING").query_async::<()>(c).await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), ping).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(crate::redis_tls::explain(target.tls.as_ref(), &target.describe(), &format!("{e:?}"))),
            Err(_) => Err(format!("Redis at {} did not answer within 5 s", target.describe())),
        }
    }
}

/// A client of one Redis, with the target's TLS when `rediss://`.
fn single_client(url: &str, tls: Option<&RedisTls>) -> Result<redis::Client, String> {
    // Errors quoting the URL would quote its password.
    let redacted = |e: redis::RedisError| format!("FLEETGATE_REDIS_URL ({}): {e}", crate::redis_target::redact(url));
    // RESP3, so that each connection hears of its own loss (a push from
    // the driver) and reconnects at once, rather than failing the next
    // call made on it after Redis is back. (The relay's pub/sub already
    // needs RESP3, so this asks nothing more of Redis.)
    let info = url.into_connection_info().map_err(redacted)?;
    let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    match tls {
        Some(tls) => redis::Client::build_with_tls(info, tls.redis_certificates()).map_err(redacted),
        None => redis::Client::open(info).map_err(redacted),
    }
}

/// Multiplexed connections to one Redis.
fn single_managers(client: redis::Client, pool_size: usize) -> Result<Vec<ConnectionManager>, String> {
    // redis-rs gives up on a reply after 500 ms by default, which a busy
    // host can exceed; the 2 s bound of every store call governs instead.
    // Reconnection backs off briefly and gives up early: a call made
    // while Redis is down must fail within that bound, and the next call
    // starts a new attempt, so recovery follows Redis within a second.
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    (0..pool_size.max(1))
        .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// Connections to a cluster. Each one holds a link to every primary and
/// routes by slot, following `MOVED` and refreshing the slot map after a
/// failover. Like the single-Redis connections they connect in the
/// background and reconnect by themselves; it is the pub/sub clients that
/// must reach Redis for the process to start.
fn cluster_connections(
    seeds: Vec<String>,
    tls: Option<&RedisTls>,
    username: Option<&str>,
    password: Option<&str>,
    pool_size: usize,
) -> Result<Vec<Conn>, String> {
    let mut builder = ClusterClient::builder(seeds)
        .use_protocol(redis::ProtocolVersion::RESP3)
        // Redirections and reconnections within the 2 s bound of a call;
        // a write is retried only when it was not applied (a redirection
        // or a refused connection), or it is fenced (positions, chat).
        .retries(3)
        .min_retry_wait(20)
        .max_retry_wait(400);
    if let Some(tls) = tls {
        builder = builder.tls(redis::TlsMode::Secure).certs(tls.redis_certificates());
    }
    if let Some(user) = username {
        builder = builder.username(user);
    }
    if let Some(password) = password {
        builder = builder.password(password);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    // The connection's config takes over the client's timeouts.
    let config =
        redis::cluster::ClusterConfig::new().set_connection_timeout(CALL_TIMEOUT).set_response_timeout(CALL_TIMEOUT);
    Ok((0..pool_size.max(1))
        .map(|_| Conn::Cluster(client.get_pending_async_connection_with_config(config.clone())))
        .collect())
}

impl RedisStore {
    /// Bounds a store call so a hung Redis turns into `unavailable`, not a
    /// hung client, and measures it under the name of its operation.
    ///
    /// A call refused for want of a connection is made again (on the next
    /// pooled connection, up to once per connection): a `ConnectionManager`
    /// whose reconnection failed while Redis was down reports that stale
    /// failure to its next call, starting a new attempt only then, even when
    /// Redis has long been back; without the retries the first call on each
    /// pooled connection after an outage would be answered `unavailable`. A
    /// refused connection means the command was never sent, so retrying is
    /// safe for writes too. While Redis is down every try is refused at once
    /// (or after the manager's short reconnection backoff), so calls still
    /// fail fast.
    async fn bounded<T, F, Fut>(&self, op: StoreOp, call: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.bounded_until(op, tokio::time::Instant::now() + CALL_TIMEOUT, call).await
    }

    /// [`RedisStore::bounded`] with its own end: a batch ends when its
    /// newest update's sender would give up.
    async fn bounded_until<T, F, Fut>(&self, op: StoreOp, until: tokio::time::Instant, call: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let started = std::time::Instant::now();
        let tries = self.pool_len() + 1;
        let attempts = async {
            let mut tried = 1;
            loop {
                match call().await {
                    Err(StoreError::Redis(e)) if e.is_connection_refusal() && tried < tries => tried += 1,
                    other => return other,
                }
            }
        };
        let result = tokio::time::timeout_at(until, attempts).await.map_err(|_| StoreError::Timeout).and_then(|r| r);
        metrics::histogram!(names::REDIS_COMMAND_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!(names::REDIS_ERRORS, "op" => op).increment(1);
        }
        result
    }
}

impl RedisStore {
    /// Counts (and lists the fleet of) `n` events a script call appended.
    async fn events_appended(&self, fleet: &str, kind: EventKind, n: u64) {
        if self.retention.events_max == 0 || n == 0 {
            return;
        }
        crate::store::events::appended(kind, n);
        self.note_fleet(fleet).await;
    }

    /// [`RedisStore::events_appended`] for the events of a batch's accepted positions.
    async fn count_position_events(&self, fleet: &str, outcomes: &[Result<PutOutcome, StoreError>]) {
        let (mut positions, mut online, mut crossings) = (0, 0, 0);
        for outcome in outcomes {
            if let Ok(PutOutcome::Accepted { back_online, crossings: c }) = outcome {
                positions += 1;
                online += u64::from(*back_online);
                crossings += c.len() as u64;
            }
        }
        self.events_appended(fleet, EventKind::VehicleOnline, online).await;
        self.events_appended(fleet, EventKind::Position, positions).await;
        self.events_appended(fleet, EventKind::Geofence, crossings).await;
    }
}

/// A chat message's JSON after its id (`"room":…}`): the script puts the
/// id it got in front, so the `chat` event's data is section 6's message.
fn chat_tail(m: &ChatMessage) -> Result<String, StoreError> {
    #[derive(serde::Serialize)]
    struct Tail<'a> {
        room: &'a str,
        from: &'a str,
        text: &'a str,
        ts: i64,
    }
    let json = serde_json::to_string(&Tail { room: &m.room, from: &m.from, text: &m.text, ts: m.ts })
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(json.get(1..).unwrap_or_default().to_owned())
}

impl RedisStore {
    /// A fenced script call (see [`PUT_POSITIONS`]) under [`RedisStore::bounded`]:
    /// `invoke` gets a connection, the send time and the deadline on
    /// Redis's clock, and returns the script's outcome (`None`: refused past
    /// the deadline) with Redis's time, which recalibrates the clock offset.
    async fn fenced<T, F, Fut>(&self, op: StoreOp, invoke: F) -> Result<T, StoreError>
    where
        F: Fn(Conn, i64, i64) -> Fut,
        Fut: Future<Output = Result<(Option<T>, i64), StoreError>>,
    {
        // The caller gives up CALL_TIMEOUT after this; the write must not
        // land later than shortly before that.
        let started = std::time::Instant::now();
        let fence_ms = i64::try_from((CALL_TIMEOUT - FENCE_MARGIN).as_millis()).unwrap_or(0);
        self.bounded(op, || async {
            let conn = self.conn().await?;
            let mut retried = false;
            loop {
                let sent = std::time::Instant::now();
                let sent_ms = now_ms();
                let left_ms = fence_ms - i64::try_from(started.elapsed().as_millis()).unwrap_or(fence_ms);
                let deadline = sent_ms + self.clock_offset_ms.load(Ordering::Relaxed) + left_ms;
                let (outcome, redis_now) = invoke(conn.clone(), sent_ms, deadline).await?;
                let rtt = sent.elapsed();
                self.calibrate(redis_now, sent_ms, rtt);
                match outcome {
                    Some(v) => return Ok(v),
                    // A refusal that is back quickly says the offset was off
                    // (clocks apart), not that the call was late: nothing
                    // was written, so try once more with the offset just
                    // learnt.
                    None if !retried && rtt <= CALIBRATION_MAX_RTT => retried = true,
                    None => return Err(StoreError::Timeout),
                }
            }
        })
        .await
    }
}

#[async_trait]
impl Store for RedisStore {
    fn recovery(&self) -> &dyn super::recovery::RecoveryStore {
        self
    }

    fn events(&self) -> &dyn super::events::EventStream {
        self
    }

    fn webhooks(&self) -> &dyn super::webhooks::WebhookStore {
        self
    }

    async fn put_positions(&self, fleet: &str, writes: &[PositionWrite<'_>]) -> Vec<Result<PutOutcome, StoreError>> {
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
        let (stream, counter) = (events::stream_key(fleet), events::counter_key(fleet));
        while !todo.is_empty() {
            let sent = std::time::Instant::now();
            let sent_ms = now_ms();
            let offset = self.clock_offset_ms.load(Ordering::Relaxed);
            let prune = self.batches.fetch_add(1, Ordering::Relaxed).is_multiple_of(PRUNE_EVERY);
            let mut call = self.put_positions.key(&index);
            call.key(&presence)
                .key(&stream)
                .key(&counter)
                .arg(self.retention.location_ttl_ms)
                .arg(sent_ms)
                .arg(self.retention.stale_after_ms)
                .arg(&channel)
                .arg(&self.node_id)
                .arg(if prune { "1" } else { "0" })
                .arg(self.retention.events_max)
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
            let reply: Result<Vec<Value>, StoreError> = self
                .bounded_until(StoreOp::PutPosition, give_up, || async {
                    let mut conn = self.conn().await?;
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
                self.calibrate(redis_now, sent_ms, rtt);
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
        self.count_position_events(fleet, &outcomes).await;
        outcomes
    }

    async fn positions(&self, fleet: &str, scope: Scope<'_>) -> Result<Vec<String>, StoreError> {
        self.bounded(StoreOp::Positions, || async {
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
        self.bounded(StoreOp::CreateSession, || async {
            let mut conn = self.conn().await?;
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

    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let raw: Option<String> = self
            .bounded(StoreOp::GetSession, || async {
                let mut conn = self.conn().await?;
                Ok(redis::cmd("GET").arg(session_key(id)).query_async(&mut conn).await?)
            })
            .await?;
        raw.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
    }

    async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        self.bounded(StoreOp::DeleteSession, || async {
            let mut conn = self.conn().await?;
            let n: i64 = redis::cmd("DEL").arg(session_key(id)).query_async(&mut conn).await?;
            Ok(n > 0)
        })
        .await
    }

    async fn append_message(&self, fleet: &str, mut message: ChatMessage) -> Result<ChatMessage, StoreError> {
        let key = room_key(fleet, &message.room);
        let (stream, counter) = (events::stream_key(fleet), events::counter_key(fleet));
        let m = &message;
        let tail = chat_tail(m)?;
        let id: String = self
            .fenced(StoreOp::AppendMessage, |mut conn, _, deadline| {
                let (key, stream, counter, tail) = (&key, &stream, &counter, &tail);
                async move {
                    let reply: (Option<String>, i64) = self
                        .append_message
                        .key(key)
                        .key(stream)
                        .key(counter)
                        .arg(self.retention.history_max.max(1))
                        .arg(&m.from)
                        .arg(&m.text)
                        .arg(m.ts)
                        .arg(deadline)
                        .arg(self.retention.history_ttl_ms)
                        .arg(self.retention.events_max)
                        .arg(fleet)
                        .arg(tail)
                        .invoke_async(&mut conn)
                        .await?;
                    Ok(reply)
                }
            })
            .await?;
        message.id = id;
        self.events_appended(fleet, EventKind::Chat, 1).await;
        Ok(message)
    }

    async fn history(
        &self,
        fleet: &str,
        room: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        // Exclusive range start; ids were checked by the caller.
        let end = before.map_or_else(|| "+".to_owned(), |b| format!("({b}"));
        let entries: Vec<(String, Vec<String>)> = self
            .bounded(StoreOp::History, || async {
                let mut conn = self.conn().await?;
                Ok(redis::cmd("XREVRANGE")
                    .arg(room_key(fleet, room))
                    .arg(&end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        let mut out: Vec<ChatMessage> = entries
            .into_iter()
            .map(|(id, fields)| {
                let mut m = ChatMessage { id, room: room.to_owned(), from: String::new(), text: String::new(), ts: 0 };
                for pair in fields.chunks(2) {
                    if let [k, v] = pair {
                        match k.as_str() {
                            "from" => m.from = v.clone(),
                            "text" => m.text = v.clone(),
                            "ts" => m.ts = v.parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                }
                m
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn vehicle_connected(&self, fleet: &str, vehicle: &str, node: &str) -> Result<bool, StoreError> {
        let became = self
            .bounded(StoreOp::VehicleConnected, || async {
                let mut conn = self.conn().await?;
                // The sweep's list of fleets lives on one shard of a cluster;
                // with that shard down the vehicle is still recorded (its
                // fleet is listed again by the next vehicle to connect).
                if let Err(e) = redis::cmd("SADD").arg(PRESENCE_FLEETS).arg(fleet).query_async::<()>(&mut conn).await {
                    tracing::debug!(error = %e, "fleet not listed for the presence sweep");
                }
                let became: i64 = self
                    .vehicle_connected
                    .key(conns_key(fleet, vehicle))
                    .key(presence_key(fleet))
                    .key(events::stream_key(fleet))
                    .key(events::counter_key(fleet))
                    .arg(node)
                    .arg(now_ms())
                    .arg(self.retention.presence_ttl_ms)
                    .arg(self.retention.stale_after_ms)
                    .arg(vehicle)
                    .arg(self.retention.events_max)
                    .arg(fleet)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(became == 1)
            })
            .await?;
        if became {
            self.events_appended(fleet, EventKind::VehicleOnline, 1).await;
        }
        Ok(became)
    }

    async fn vehicle_disconnected(&self, fleet: &str, vehicle: &str, node: &str) -> Result<Option<i64>, StoreError> {
        let last_seen = self
            .bounded(StoreOp::VehicleDisconnected, || async {
                let mut conn = self.conn().await?;
                let last_seen: i64 = self
                    .vehicle_disconnected
                    .key(conns_key(fleet, vehicle))
                    .key(presence_key(fleet))
                    .key(events::stream_key(fleet))
                    .key(events::counter_key(fleet))
                    .arg(node)
                    .arg(now_ms())
                    .arg(self.retention.stale_after_ms)
                    .arg(vehicle)
                    .arg(self.retention.events_max)
                    .arg(fleet)
                    .invoke_async(&mut conn)
                    .await?;
                Ok((last_seen >= 0).then_some(last_seen))
            })
            .await?;
        if last_seen.is_some() {
            self.events_appended(fleet, EventKind::VehicleOffline, 1).await;
        }
        Ok(last_seen)
    }

    async fn refresh_presence(&self, node: &str, vehicles: &[(String, String)]) -> Result<(), StoreError> {
        if vehicles.is_empty() {
            return Ok(());
        }
        let ttl = self.retention.presence_ttl_ms;
        let until = now_ms() + ttl;
        // One pipeline on one Redis; on a cluster, one per fleet (a
        // pipeline may not cross slots), sent together.
        let mut pipes: std::collections::BTreeMap<&str, redis::Pipeline> = std::collections::BTreeMap::new();
        for (fleet, vehicle) in vehicles {
            let pipe = pipes.entry(if self.cluster { fleet.as_str() } else { "" }).or_default();
            let key = conns_key(fleet, vehicle);
            pipe.cmd("ZADD").arg(&key).arg(until).arg(node).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(2 * ttl).ignore();
        }
        self.bounded(StoreOp::RefreshPresence, || async {
            let calls = pipes.values().map(|pipe| async move {
                let mut conn = self.conn().await?;
                pipe.query_async::<()>(&mut conn).await?;
                Ok::<_, StoreError>(())
            });
            futures_util::future::try_join_all(calls).await?;
            Ok(())
        })
        .await
    }

    async fn sweep_presence(&self) -> Result<Vec<Offline>, StoreError> {
        // Dead replicas are looked for every 5th sweep; staleness every sweep.
        let n = self.sweeps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let check_conns = if n.is_multiple_of(5) { "1" } else { "0" };
        self.bounded(StoreOp::SweepPresence, || async {
            let mut conn = self.conn().await?;
            let fleets: Vec<String> = redis::cmd("SMEMBERS").arg(PRESENCE_FLEETS).query_async(&mut conn).await?;
            // Fleets are swept side by side, each within its own bound: on a
            // cluster with one shard down (or stalled) the fleets of the
            // others are still swept.
            let sweeps = fleets.into_iter().map(|fleet| async move {
                let mut conn = self.conn().await?;
                let mut invocation = self.sweep_presence.key(presence_key(&fleet));
                invocation
                    .key(events::stream_key(&fleet))
                    .key(events::counter_key(&fleet))
                    .arg(now_ms())
                    .arg(self.retention.stale_after_ms)
                    .arg(conns_key(&fleet, ""))
                    .arg(check_conns)
                    .arg(self.retention.events_max)
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
                self.events_appended(&fleet, EventKind::VehicleOffline, (flat.len() / 2) as u64).await;
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

    async fn put_geofence(&self, fleet: &str, id: &str, feature: &str, max: usize) -> Result<FenceWrite, StoreError> {
        self.bounded(StoreOp::PutGeofence, || async {
            let mut conn = self.conn().await?;
            let reply: Value = self
                .geofence_scripts
                .put
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

    async fn delete_geofence(&self, fleet: &str, id: &str) -> Result<bool, StoreError> {
        self.bounded(StoreOp::DeleteGeofence, || async {
            let mut conn = self.conn().await?;
            let existed: i64 = self
                .geofence_scripts
                .delete
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

    async fn geofences(&self, fleet: &str) -> Result<FenceSet, StoreError> {
        let (version, flat): (String, Vec<String>) = self
            .bounded(StoreOp::Geofences, || async {
                let mut conn = self.conn().await?;
                Ok(self
                    .geofence_scripts
                    .all
                    .key(geofences_key(fleet))
                    .key(geofence_version_key(fleet))
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
        let version = version.parse().map_err(|_| StoreError::Corrupt("geofence version".into()))?;
        let features = flat.chunks(2).filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone()))).collect();
        Ok(FenceSet { version, features })
    }

    async fn geofence(&self, fleet: &str, id: &str) -> Result<Option<(String, Vec<String>)>, StoreError> {
        let (feature, mut inside): (Option<String>, Vec<String>) = self
            .bounded(StoreOp::Geofence, || async {
                let mut conn = self.conn().await?;
                Ok(self
                    .geofence_scripts
                    .one
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

    async fn geofence_versions(&self, fleets: &[String]) -> Result<Vec<u64>, StoreError> {
        self.bounded(StoreOp::GeofenceVersions, || async {
            // One GET per fleet, side by side: on a cluster each fleet's
            // version lives on its own shard.
            let gets = fleets.iter().map(|fleet| async move {
                let mut conn = self.conn().await?;
                let v: Option<u64> = redis::cmd("GET").arg(geofence_version_key(fleet)).query_async(&mut conn).await?;
                Ok::<_, StoreError>(v.unwrap_or(0))
            });
            futures_util::future::try_join_all(gets).await
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(StoreOp::Ping, || async {
            let mut conn = self.conn().await?;
            match &mut conn {
                Conn::Single(c) => redis::cmd("PING").query_async::<()>(c).await?,
                Conn::Primary(c) => redis::cmd("PING").query_async::<()>(c).await?,
                // Ready while any primary answers: with one shard down the
                // fleets of the others are still served, and pulling every
                // replica out of service would stop those too.
                Conn::Cluster(c) => {
                    let any_primary = RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::OneSucceeded),
                    ));
                    c.route_command(redis::cmd("PING"), any_primary).await?;
                }
            }
            Ok(())
        })
        .await
    }
}
