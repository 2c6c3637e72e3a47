-- Extend the locks a worker still holds. Args: ttl ms, then pairs id, token.
-- Returns {lost ids, cancel-requested ids}.
local deadline = now_ms() + tonumber(ARGV[A])
local lost, cancelled = {}, {}
for i = A + 1, #ARGV, 2 do
  local id = ARGV[i]
  local f = redis.call('HMGET', job_key(id), 'st', 'tok', 'cx')
  if f[1] == S_ACTIVE and f[2] == ARGV[i + 1] then
    redis.call('ZADD', K_ACTIVE, deadline, id)
    if f[3] then cancelled[#cancelled + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, cancelled}
