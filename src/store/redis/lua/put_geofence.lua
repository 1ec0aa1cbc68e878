-- Creates or replaces a geofence (KEYS: the fleet's geofences hash, its
-- version; ARGV: id, Feature JSON, the fleet's cap). Returns `{created,
-- version}`, or `-1` for a new id over the cap.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
local created = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {created, redis.call('INCR', KEYS[2])}
