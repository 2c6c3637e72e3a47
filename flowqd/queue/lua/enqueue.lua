-- Add jobs; an id that exists adds nothing. Args per job (8):
-- id, flow id, flow version, inputs (JSON), delay ms, max attempts, timeout s or '', owner or ''
local now = now_ms()
local rang = false
for i = A, #ARGV, 8 do
  local id = ARGV[i]
  local jk = job_key(id)
  if redis.call('EXISTS', jk) == 0 then
    local delay = tonumber(ARGV[i + 4])
    local status = 'waiting'
    if delay > 0 then status = 'delayed' end
    redis.call('HSET', jk, 'flow', ARGV[i + 1], 'ver', ARGV[i + 2], 'in', ARGV[i + 3],
      'st', status, 'att', 0, 'max', ARGV[i + 5], 'to', ARGV[i + 6], 'own', ARGV[i + 7],
      'ct', now, 'stl', 0)
    if delay > 0 then
      redis.call('ZADD', K_DELAYED, now + delay, id)
    else
      redis.call('LPUSH', K_WAIT, id)
      rang = true
    end
  end
end
if rang then ring_workers() end
return 0
