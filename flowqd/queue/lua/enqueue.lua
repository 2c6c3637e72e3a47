-- Add jobs; an id that exists adds nothing. Args per job (11):
-- id, flow id, flow version, inputs (JSON), delay ms, max attempts, timeout s or '', owner or '',
-- trace context or '', priority or '' (0), '1' if the caller chose the id or '' if it
-- made a new random one (128 bits: not looked up)
-- An id held by a job of another owner refuses the whole call before anything
-- is added (checked here, atomically): returns the 0-based positions of those
-- jobs, or an empty array when the jobs were added.
local exists = {}
local taken = {}
for i = A, #ARGV, 11 do
  if ARGV[i + 10] ~= '' then
    local found = redis.call('HMGET', job_key(ARGV[i]), 'st', 'own')
    if found[1] then
      exists[ARGV[i]] = true
      if (found[2] or '') ~= ARGV[i + 7] then taken[#taken + 1] = (i - A) / 11 end
    end
  end
end
if #taken > 0 then return taken end
local now = now_ms()
local waiting = {}
local rang = false
for i = A, #ARGV, 11 do
  local id = ARGV[i]
  local jk = job_key(id)
  if not exists[id] then
    -- Marked now: the same id twice in one call adds one job.
    exists[id] = true
    local delay = tonumber(ARGV[i + 4])
    local status = S_WAITING
    if delay > 0 then status = S_DELAYED end
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
    -- Only traced jobs pay for the field.
    if ARGV[i + 8] ~= '' then redis.call('HSET', jk, 'tc', ARGV[i + 8]) end
    -- And only prioritised ones for theirs.
    local pri = ARGV[i + 9]
    if pri ~= '' then redis.call('HSET', jk, 'pri', pri) end
    if delay > 0 then
      redis.call('ZADD', K_DELAYED, now + delay, id)
    elseif pri ~= '' then
      to_wait(id, pri, false)
      rang = true
    else
      waiting[#waiting + 1] = id
    end
  end
end
-- One push for all (the caller sends at most 1000 jobs a call): in order,
-- as if pushed one by one.
if #waiting > 0 then
  redis.call('LPUSH', K_WAIT, unpack(waiting))
  rang = true
end
if rang then ring_workers() end
return {}
