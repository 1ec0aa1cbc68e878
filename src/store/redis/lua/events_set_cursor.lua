-- KEYS: cursor, then the lease it is written under (if any); ARGV: cursor,
-- the lease's holder. 1 when written.
if KEYS[2] and redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
