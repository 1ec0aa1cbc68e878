-- A vehicle's last socket on a replica is gone: KEYS conns, presence, event
-- stream, its counter; ARGV node, now, stale-after, vehicle, events cap,
-- fleet. Its last-seen time (and a `vehicle_offline` event) when it became
-- offline, else negative.
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
