-- KEYS: the fleet's log; ARGV: after (`<ms>-<seq>`), max. Returns `{trimmed (0/1), id, entry, ...}`:
-- trimmed when an entry after `after` was deleted (the cap) or more than
-- `max` follow it. A log that does not exist lost nothing: it lives longer
-- than the recovery window after its last append.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local function later(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' and later(info[i + 1], ARGV[1]) then return {1} end
end
local max = tonumber(ARGV[2])
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', max + 1)
if #entries > max then return {1} end
local out = {0}
for _, e in ipairs(entries) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2][2]
end
return out
