-- Pause, resume or delete a schedule. Args: 'pause' | 'resume' | 'delete', id,
-- due ms (resume: when a paused schedule is next due; a running one keeps its
-- own). Returns 0 for an unknown schedule, 1 otherwise.
local op, id = ARGV[A], ARGV[A + 1]
if redis.call('HEXISTS', K_SCHEDULES, id) == 0 then return 0 end
if op == 'pause' then
  redis.call('ZREM', K_SCHEDULE_DUE, id)
elseif op == 'resume' then
  redis.call('ZADD', K_SCHEDULE_DUE, 'NX', ARGV[A + 2], id)
else
  redis.call('HDEL', K_SCHEDULES, id)
  redis.call('ZREM', K_SCHEDULE_DUE, id)
  redis.call('HDEL', K_SCHEDULE_LAST, id)
end
return 1
