-- Live workers' records; forgets those whose heartbeat key expired.
local out = {}
for _, id in ipairs(redis.call('ZRANGE', K_WORKERS, 0, -1)) do
  local info = redis.call('GET', worker_key(id))
  if info then
    out[#out + 1] = info
  else
    redis.call('ZREM', K_WORKERS, id)
  end
end
return out
