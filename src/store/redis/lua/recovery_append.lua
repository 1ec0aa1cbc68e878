-- KEYS: the fleet's log; ARGV: now (ms), entry, max, ttl. The id is on the replica's clock, like
-- positions' offsets (their `receivedAt`), so both order alike; when the log
-- already holds a later id Redis picks the next one. Returns the id.
local ok, id = pcall(redis.call, 'XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[1] .. '-*', 'e', ARGV[2])
if not ok then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '*', 'e', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return id
