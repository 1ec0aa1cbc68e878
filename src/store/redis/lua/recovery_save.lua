-- KEYS: the socket's record; ARGV: holder, state, ttl, claim (`1`). Returns 1 when written.
if ARGV[4] ~= '1' and redis.call('HGET', KEYS[1], 'h') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'h', ARGV[1], 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
