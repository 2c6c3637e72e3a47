-- Cancel a job. Args: id, reason. Waiting/delayed: ended now. Active: flagged
-- and its worker told. Returns the job's fields, nil if unknown.
local id, reason = ARGV[A], ARGV[A + 1]
local jk = job_key(id)
local f = redis.call('HMGET', jk, 'st', 'pri')
local status = f[1]
if not status then return false end
if status == S_WAITING or status == S_DELAYED then
  if status == S_WAITING then
    from_wait(id, f[2])
  else
    redis.call('ZREM', K_DELAYED, id)
  end
  finish_cancelled(id, reason, now_ms())
elseif status == S_ACTIVE then
  redis.call('HSETNX', jk, 'cx', reason)
  redis.call('PUBLISH', CH_CANCEL, id)
end
announce()
return redis.call('HMGET', jk, unpack(JOB_FIELDS))
