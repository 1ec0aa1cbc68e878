-- Deletes a geofence (KEYS: geofences hash, version, its inside set; ARGV:
-- id, position key prefix) and takes it out of the stored sets of the
-- vehicles inside, so none gets an exit and a geofence created again under
-- this id starts empty. Returns whether it existed.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
for _, v in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local pos = ARGV[2] .. v
  local g = redis.call('HGET', pos, 'g')
  if g then
    local keep = {}
    for id in string.gmatch(g, '[^ ]+') do if id ~= ARGV[1] then keep[#keep + 1] = id end end
    redis.call('HSET', pos, 'g', table.concat(keep, ' '))
  end
end
redis.call('DEL', KEYS[3])
return 1
