-- Forget one job: its record and its events. Args: id. An active job is
-- left as it is (its worker holds it). Returns the status it had, false if unknown.
local id = ARGV[A]
local jk = job_key(id)
local f = redis.call('HMGET', jk, 'st', 'pri')
local status = f[1]
if not status then return false end
if status == S_ACTIVE then return status end
if status == S_WAITING then
  from_wait(id, f[2])
elseif status == S_DELAYED then
  redis.call('ZREM', K_DELAYED, id)
else
  redis.call('ZREM', finished_key(status), id)
end
redis.call('DEL', jk, events_key(id))
return status
