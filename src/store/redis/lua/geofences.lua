-- A fleet's geofences with their version, read together (KEYS: hash,
-- version).
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
