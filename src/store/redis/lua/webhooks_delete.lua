-- KEYS: the fleet's webhooks, the webhook's cursor and lease; ARGV: id. 1
-- when it existed.
local existed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return existed
