-- Put a failed or cancelled job back in wait with a fresh stream. Args: id.
local id = ARGV[A]
local jk = job_key(id)
local status = redis.call('HGET', jk, 'st')
if not status then return false end
if status == S_FAILED or status == S_CANCELLED then
  redis.call('ZREM', finished_key(status), id)
  redis.call('DEL', events_key(id))
  redis.call('HDEL', jk, 'res', 'err', 'nodes', 'cx', 'sat', 'ft', 'wk', 'tok')
  redis.call('HSET', jk, 'st', S_WAITING, 'att', 0, 'stl', 0)
  redis.call('PERSIST', jk)
  redis.call('LPUSH', K_WAIT, id)
  ring_workers()
end
return redis.call('HMGET', jk, unpack(JOB_FIELDS))
