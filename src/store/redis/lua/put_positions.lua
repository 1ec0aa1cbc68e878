-- The position compare-and-set of a batch of one fleet's updates, and their
-- announcement. Each update is fenced: one that reaches Redis after its own
-- deadline (on Redis's clock, set just before its sender gives up and is
-- answered `unavailable`) changes nothing. Without the fence, a write that
-- waited out a stalled Redis (paused, swapping, a partition that heals) would
-- still be applied and announced when Redis resumed: a position stored and
-- shown to watchers after its sender was told it was not. Updates are applied
-- in order, so two of one vehicle meet each other's result. Those stored
-- leave in ONE message on the fleet's sharded channel, in the format of
-- `crate::replication::wire`.
--
-- Each accepted update's events are appended to the fleet's event stream
-- (section 12) in the same step, in the order sockets hear them: the vehicle
-- back online, its position (the encoded event as it is, as the event's
-- data), then its crossings. A fenced, stale or refused update appends
-- nothing.
--
-- KEYS: index, presence, event stream, its counter, then per update its
-- position key and conns key. ARGV: ttl, now (ms), stale-after, channel, node
-- id, prune (`1`: drop the index's expired members too), events cap, fleet,
-- then per update ts, event, vehicle, deadline; then the geofence arguments
-- (see the block in the script). Returns `{redis_now_ms, outcome...,
-- crossings...}` (outcome -1: past its deadline, -2: refused, the geofences
-- changed, 0: stale, 1: stored, 2: stored and back online; crossings: per
-- update `-<id>`/`+<id>` separated by spaces, `""` when none); Redis's time
-- calibrates the deadlines of later calls.
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
  if online then
    ev_add('vehicle_online', '{"fleet":"' .. ARGV[8] .. '","vehicleId":"' .. vehicle .. '","ts":' .. ARGV[2] .. '}')
  end
  ev_add('position', ARGV[a + 2])
  if crossed[i] == '' then return end
  local head = '{"fleet":"' .. ARGV[8] .. '","vehicleId":"' .. vehicle .. '"'
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
