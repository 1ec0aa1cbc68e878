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
-- `ev_close()` saves the ordinal of a call that appended several. With a cap
-- of 0 nothing is read or written. The JSON is `store::events::encode`'s.
--
-- Why it is written this way (README "Event outputs", cost): in Redis's Lua
-- every new string is hashed byte by byte and every number turned into text
-- goes through `sprintf`, so the call's time is formatted once (`ev_ts`),
-- each event formats only its ordinal, and its entry is built by one
-- concatenation with no partial strings kept. An accepted `XADD` answers the
-- id it was given, which a string comparison checks. The stream is trimmed
-- (`MAXLEN ~`, whole nodes only) by the events whose ordinal is a multiple of
-- `EV_TRIM`: parsing the option and looking at the oldest node on every
-- `XADD` cost a tenth of an event, and the stream holds at most
-- `EV_TRIM - 1` more events for it.
local EV_TRIM = 8
local ev_key, ev_count, ev_cap, ev_fleet, ev_ts, ev_ms, ev_n, ev_dirty
local function ev_open(key, count, cap, fleet, now)
  if cap == '0' then return end
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  ev_key, ev_count, ev_cap, ev_fleet = key, count, cap, fleet
  -- `ts` is the call's time; `ms`, the ids' time, moves on past it only
  -- when the stream's last id is ahead.
  ev_ts = string.format('%d', now)
  ev_ms = ev_ts
end
local function ev_add(kind, data)
  if not ev_key then return end
  if ev_n then ev_n, ev_dirty = ev_n + 1, true else ev_n = redis.call('INCR', ev_count) end
  for attempt = 1, 2 do
    local id = ev_ms .. '-' .. string.format('%d', ev_n)
    local entry = '{"id":"' .. ev_fleet .. '/' .. id .. '","type":"' .. kind .. '","fleet":"' .. ev_fleet ..
      '","ts":' .. ev_ts .. ',"data":' .. data .. '}'
    local r
    if ev_n % EV_TRIM == 0 then
      r = redis.pcall('XADD', ev_key, 'MAXLEN', '~', ev_cap, id, 'event', entry)
    else
      r = redis.pcall('XADD', ev_key, id, 'event', entry)
    end
    if r == id then return end
    local last = attempt == 1 and redis.call('XREVRANGE', ev_key, '+', '-', 'COUNT', 1)[1]
    if not last then error(r) end
    local ms, seq = string.match(last[1], '^(%d+)-(%d+)$')
    if tonumber(ms) > tonumber(ev_ms) then ev_ms = ms end
    if ev_n <= tonumber(seq) then ev_n, ev_dirty = tonumber(seq) + 1, true end
  end
end
local function ev_close()
  if ev_dirty then redis.call('SET', ev_count, ev_n) end
end
