-- Put failed or cancelled jobs back in wait. Attempts go on (max grows when
-- all were used), stalls start again, and the events are kept: 'retried' goes
-- right after the earlier run's terminal event (in the stream, where the
-- events held in the record go first).
-- Args: id, or '' and a limit: the oldest `limit` failed jobs.
-- Returns {1 or 0, the job's fields} for an id (false: unknown), {count} for failed jobs.
local function reopen(id, status)
  local jk = job_key(id)
  redis.call('ZREM', finished_key(status), id)
  local f = redis.call('HMGET', jk, 'att', 'max', 'pri', 'evs')
  if f[4] then unpack_entry_to_stream(id, f[4]) end
  redis.call('HDEL', jk, 'res', 'err', 'nodes', 'cx', 'sat', 'ft', 'wk', 'prog')
  local att = tonumber(f[1] or '0')
  local max = math.max(tonumber(f[2]), att + 1)
  redis.call('HSET', jk, 'st', S_WAITING, 'stl', 0, 'max', max, 'ev', '1')
  -- Records written before removal by age was forget_older() had a TTL.
  redis.call('PERSIST', jk)
  redis.call('PERSIST', events_key(id))
  add_event(id, EV_RETRIED, cjson.encode({attempt = att + 1}))
  to_wait(id, f[3], false)
end

local id = ARGV[A]
if id ~= '' then
  local jk = job_key(id)
  local status = redis.call('HGET', jk, 'st')
  if not status then return false end
  local done = 0
  if status == S_FAILED or status == S_CANCELLED then
    reopen(id, status)
    ring_workers()
    announce()
    done = 1
  end
  return {done, redis.call('HMGET', jk, unpack(JOB_FIELDS))}
end

local count = 0
for _, failed in ipairs(redis.call('ZRANGE', K_FAILED, 0, tonumber(ARGV[A + 1]) - 1)) do
  if redis.call('HGET', job_key(failed), 'st') == S_FAILED then
    reopen(failed, S_FAILED)
    count = count + 1
  else
    redis.call('ZREM', K_FAILED, failed)  -- its record expired: nothing to retry
  end
end
if count > 0 then
  ring_workers()
  announce()
end
return {count}
