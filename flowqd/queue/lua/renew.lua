-- Extend the locks a worker still holds. Args: ttl ms, then pairs id, token.
-- Returns {lost ids, cancel-requested ids}.
local deadline = now_ms() + tonumber(ARGV[A])
local ids = {}
for i = A + 1, #ARGV, 2 do ids[#ids + 1] = ARGV[i] end
local values = read_locks(ids)
local lost, cancelled = {}, {}
for k, id in ipairs(ids) do
  if holds(values[k], ARGV[A + 2 * k]) then
    redis.call('ZADD', K_ACTIVE, deadline, id)
    if redis.call('HEXISTS', job_key(id), 'cx') == 1 then cancelled[#cancelled + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, cancelled}
