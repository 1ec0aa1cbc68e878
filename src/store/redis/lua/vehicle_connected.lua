-- A vehicle's socket on a replica: KEYS conns, presence, event stream, its
-- counter; ARGV node, now, presence ttl, stale-after, vehicle, events cap,
-- fleet. 1 (and a `vehicle_online` event) when it became online.
local now = tonumber(ARGV[2])
ev_open(KEYS[3], KEYS[4], ARGV[6], ARGV[7])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
local s = redis.call('ZSCORE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[5])
if s and tonumber(s) > now then return 0 end
ev_add('vehicle_online', '{"fleet":"' .. ARGV[7] .. '","vehicleId":"' .. ARGV[5] .. '","ts":' .. ARGV[2] .. '}')
return 1
