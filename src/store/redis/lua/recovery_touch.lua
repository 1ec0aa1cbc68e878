-- KEYS: records; ARGV: ttl, then each record's holder.
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'h') == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
return #KEYS
