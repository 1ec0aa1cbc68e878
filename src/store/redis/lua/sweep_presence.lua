-- A fleet's vehicles gone stale (or, with ARGV[4] `1`, whose replicas stopped
-- refreshing them): KEYS presence, event stream, its counter; ARGV now,
-- stale-after, conns key prefix, check conns, events cap, fleet. Returns
-- `{vehicle, last seen, ...}`, each also a `vehicle_offline` event.
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
