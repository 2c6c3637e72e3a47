-- Add jobs; an id that exists adds nothing. Args per job (8):
-- id, flow id, flow version, inputs (JSON), delay ms, max attempts, timeout s or '', owner or ''
local now = now_ms()
local waiting = {}
for i = A, #ARGV, 8 do
  local id = ARGV[i]
  local jk = job_key(id)
  if redis.call('EXISTS', jk) == 0 then
    local delay = tonumber(ARGV[i + 4])
    local status = 'waiting'
    if delay > 0 then status = 'delayed' end
    -- Absent fields read as 0 (attempts, stalls) or none (timeout, owner):
    -- a smaller hash is cheaper to build, and bulk enqueue makes thousands.
    local timeout, owner = ARGV[i + 6], ARGV[i + 7]
    if timeout == '' and owner == '' then
      redis.call('HSET', jk, 'flow', ARGV[i + 1], 'ver', ARGV[i + 2], 'in', ARGV[i + 3],
        'st', status, 'max', ARGV[i + 5], 'ct', now)
    else
      redis.call('HSET', jk, 'flow', ARGV[i + 1], 'ver', ARGV[i + 2], 'in', ARGV[i + 3],
        'st', status, 'max', ARGV[i + 5], 'ct', now, 'to', timeout, 'own', owner)
    end
    if delay > 0 then
      redis.call('ZADD', K_DELAYED, now + delay, id)
    else
      waiting[#waiting + 1] = id
    end
  end
end
-- One push for all (the caller sends at most 1000 jobs a call): in order,
-- as if pushed one by one.
if #waiting > 0 then
  redis.call('LPUSH', K_WAIT, unpack(waiting))
  ring_workers()
end
return 0
