-- A fleet's last-known positions (KEYS: its index; ARGV: now (ms), the
-- position key prefix, then the vehicle ids, or none for every vehicle
-- whose position has not expired). Returns the encoded events found.
local ids
if #ARGV > 2 then
  ids = {}
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
end
local out = {}
for _, id in ipairs(ids) do
  local p = redis.call('HGET', ARGV[2] .. id, 'p')
  if p then out[#out + 1] = p end
end
return out
