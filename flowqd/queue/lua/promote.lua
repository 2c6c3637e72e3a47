-- Move due delayed jobs to wait. Args: limit. Returns {moved, ms until the
-- next due job or -1}.
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, tonumber(ARGV[A]))
local moved = 0
for _, id in ipairs(ids) do
  redis.call('ZREM', K_DELAYED, id)
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'st', 'pri')
  if f[1] == S_DELAYED then
    redis.call('HSET', jk, 'st', S_WAITING)
    to_wait(id, f[2], false)
    moved = moved + 1
  end
end
if moved > 0 then ring_workers() end
local next_due = -1
local first = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
if first[2] then next_due = math.max(tonumber(first[2]) - now, 0) end
return {#ids, next_due}
