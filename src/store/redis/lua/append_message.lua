-- Appends a chat message to its room's capped stream, fenced like
-- `put_positions.lua` (`ARGV[5]`: the deadline on Redis's clock), so a message
-- answered `unavailable` never lands in the history later, and its `chat`
-- event to the fleet's event stream. KEYS: room, event stream, its counter;
-- ARGV: history cap, from, text, ts, deadline, history ttl, events cap,
-- fleet, the message's JSON after its id (`"room":…}`). Returns `{id,
-- redis_now_ms}`, or `{false, redis_now_ms}` past the deadline.
local t = redis.call('TIME')
local rnow = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if rnow > tonumber(ARGV[5]) then
  return {false, rnow}
end
ev_open(KEYS[2], KEYS[3], ARGV[7], ARGV[8], rnow)
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'from', ARGV[2], 'text', ARGV[3], 'ts', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
ev_add('chat', '{"id":"' .. id .. '",' .. ARGV[9])
return {id, rnow}
