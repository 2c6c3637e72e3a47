-- Run one delayed job now. Args: id. Other states: unchanged. Returns the
-- job's fields, false if unknown.
local id = ARGV[A]
local jk = job_key(id)
local status = redis.call('HGET', jk, 'st')
if not status then return false end
if status == S_DELAYED then
  redis.call('ZREM', K_DELAYED, id)
  redis.call('HSET', jk, 'st', S_WAITING)
  to_wait(id, redis.call('HGET', jk, 'pri'), false)
  ring_workers()
end
return redis.call('HMGET', jk, unpack(JOB_FIELDS))
