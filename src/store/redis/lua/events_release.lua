-- KEYS: lease; ARGV: holder. 1 when given up.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
