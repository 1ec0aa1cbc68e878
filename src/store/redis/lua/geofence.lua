-- One geofence and who is inside it (KEYS: hash, its inside set; ARGV: id,
-- position key prefix). Members whose position expired, or whose stored set
-- no longer holds the geofence, are dropped on the way.
local f = redis.call('HGET', KEYS[1], ARGV[1])
if not f then return {false, {}} end
local inside = {}
for _, v in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local g = redis.call('HGET', ARGV[2] .. v, 'g')
  local found = false
  if g then for id in string.gmatch(g, '[^ ]+') do if id == ARGV[1] then found = true end end end
  if found then inside[#inside + 1] = v else redis.call('SREM', KEYS[2], v) end
end
return {f, inside}
