-- KEYS: the fleet's webhooks, its stream, the webhook's cursor and lease;
-- ARGV: id, record, max. 1 created, 0 replaced, -1 full.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
local cursor = '0-0 0'
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if last then
  -- A stream id's sequence is the event's ordinal.
  cursor = last[1] .. ' ' .. string.match(last[1], '-(%d+)$')
end
redis.call('SET', KEYS[3], cursor)
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
