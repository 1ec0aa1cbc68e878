-- The part of the scripts that appends events, prepended to each script that
-- writes some. `ev_open(stream, counter, cap, fleet[, now])` starts a call's
-- events (nothing is read: the common path costs one `XADD` per event and one
-- `INCR` per call); each `ev_add(type, data)` appends one with an explicit id
-- `<ms>-<n>`: `ms` the call's Redis time, `n` the event's ordinal in its
-- fleet's stream, from the counter `:events:n` (the stream itself cannot tell
-- its last id without reading an entry, which costs more than the `XADD`). So
-- the id is known before the entry is written and sits in its JSON, and it
-- increases per fleet. Should the clock have stepped back behind the stream's
-- last id (or the counter been lost), `XADD` refuses the id without writing,
-- and the event takes the last id's time and next ordinal instead.
-- `ev_close()` saves the ordinal of a call that appended several. `MAXLEN ~`
-- trims whole nodes only, cheaply. With a cap of 0 nothing is read or
-- written. The JSON is `store::events::encode`'s.
local ev_key, ev_count, ev_cap, ev_ms, ev_head, ev_mid, ev_n, ev_dirty
local function ev_open(key, count, cap, fleet, now)
  if cap == '0' then return end
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  ev_key, ev_count, ev_cap, ev_ms = key, count, cap, now
  ev_head = '{"id":"' .. fleet .. '/'
  ev_mid = '","fleet":"' .. fleet .. '","ts":' .. string.format('%d', now) .. ',"data":'
end
local function ev_add(kind, data)
  if not ev_key then return end
  if ev_n then ev_n, ev_dirty = ev_n + 1, true else ev_n = redis.call('INCR', ev_count) end
  local id = string.format('%d-%d', ev_ms, ev_n)
  local r = redis.pcall('XADD', ev_key, 'MAXLEN', '~', ev_cap, id, 'event',
    ev_head .. id .. '","type":"' .. kind .. ev_mid .. data .. '}')
  if type(r) == 'table' and r.err then
    local last = redis.call('XREVRANGE', ev_key, '+', '-', 'COUNT', 1)[1]
    if not last then error(r) end
    local ms, seq = string.match(last[1], '^(%d+)-(%d+)$')
    ev_ms = math.max(ev_ms, tonumber(ms))
    if ev_n <= tonumber(seq) then ev_n, ev_dirty = tonumber(seq) + 1, true end
    id = string.format('%d-%d', ev_ms, ev_n)
    redis.call('XADD', ev_key, 'MAXLEN', '~', ev_cap, id, 'event',
      ev_head .. id .. '","type":"' .. kind .. ev_mid .. data .. '}')
  end
end
local function ev_close()
  if ev_dirty then redis.call('SET', ev_count, ev_n) end
end
