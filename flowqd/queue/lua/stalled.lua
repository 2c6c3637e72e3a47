-- Stalled check: jobs whose lock deadline passed go back to wait (attempt
-- counted) or, past max_stalled, fail. Also forgets finished jobs by age.
-- Args: check key ttl ms (0: this caller already won this round), limit.
-- Returns -1 if another process runs this round, else {the most jobs handled
-- of any one kind (stalled, or aged of one status: the caller calls again
-- while it is `limit`), ids requeued, ids failed (past max_stalled), ids
-- cancelled} (the caller logs them).
if ARGV[A] ~= '0' then
  if not redis.call('SET', K_STALLED_CHECK, '1', 'NX', 'PX', ARGV[A]) then return -1 end
end
local now = now_ms()
local limit = tonumber(ARGV[A + 1])
local ids = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', now, 'LIMIT', 0, limit)
local rang = false
local requeued, failed, cancelled = {}, {}, {}
for _, id in ipairs(ids) do
  redis.call('ZREM', K_ACTIVE, id)
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'st', 'cx', 'pri')
  if f[1] == S_ACTIVE then
    redis.call('HDEL', K_LOCKS, id)
    local stalls = redis.call('HINCRBY', jk, 'stl', 1)
    if f[2] then
      finish_cancelled(id, f[2], now)
      cancelled[#cancelled + 1] = id
    elseif stalls > CFG.max_stalled then
      terminal(id, S_FAILED, EV_ERROR, STALLED_EVENT, now, {'err', STALLED_ERROR})
      failed[#failed + 1] = id
    else
      redis.call('HSET', jk, 'st', S_WAITING)
      to_wait(id, f[3], true)
      requeued[#requeued + 1] = id
      rang = true
    end
  end
end
if rang then ring_workers() end
-- Removal by age, for the times no flush runs (forget_older).
local cutoff, aged = now - CFG.age_ms, 0
for _, status in ipairs(FINISHED) do
  aged = math.max(aged, forget_older(status, cutoff, limit))
end
announce()
return {math.max(#ids, aged), requeued, failed, cancelled}
