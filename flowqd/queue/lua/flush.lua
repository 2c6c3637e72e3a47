-- Append events, then record outcomes. Args: R (event runs), per run: job
-- id, event count C, then C pairs (name, data); then per outcome (8): id,
-- token, kind (c f x r), stored (result JSON / error JSON / cancel reason),
-- event data (error event JSON), nodes JSON or '', retry '1'/'0', jitter in
-- [0, 1) (failures only).
-- A run's last 'progress' event also goes on the job record (field prog).
-- Returns 1/0 per outcome (0: token is not the job's current one: refused).
local now = now_ms()
local n_runs = tonumber(ARGV[A])
local first_outcome = A + 1
for _ = 1, n_runs do first_outcome = first_outcome + 2 + 2 * tonumber(ARGV[first_outcome + 1]) end
-- The fields each outcome's check needs, read once per job before the
-- events, which reuse them (appending events changes none of them).
local read = {}
for o = first_outcome, #ARGV, 8 do
  local id = ARGV[o]
  if read[id] == nil then read[id] = redis.call('HMGET', job_key(id), 'st', 'tok', 'att', 'max', 'cx', 'pri') end
end
local live = {}
local i = A + 1
for _ = 1, n_runs do
  local id, count = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local ok = live[id]
  if ok == nil then
    -- Never after the terminal event.
    local f = read[id]
    if f then ok = f[1] == S_ACTIVE else ok = redis.call('HGET', job_key(id), 'st') == S_ACTIVE end
    live[id] = ok
  end
  if ok then
    local progress = nil
    for e = i, i + 2 * count - 1, 2 do
      add_event(id, ARGV[e], ARGV[e + 1])
      if ARGV[e] == EV_PROGRESS then progress = ARGV[e + 1] end
    end
    if progress then redis.call('HSET', job_key(id), 'prog', progress) end
  end
  i = i + 2 * count
end

local results = {}
local unlocked = {}  -- left active: removed from K_ACTIVE at once, at the end
local rang = false
while i <= #ARGV do
  local id, token, kind = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local stored, event_data, nodes = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local jk = job_key(id)
  -- Read above, unless an earlier outcome of this call changed the job.
  local f = read[id]
  if not f then f = redis.call('HMGET', jk, 'st', 'tok', 'att', 'max', 'cx', 'pri') end
  read[id] = false
  if f[1] ~= S_ACTIVE or f[2] ~= token then
    results[#results + 1] = 0
  else
    results[#results + 1] = 1
    live[id] = nil
    unlocked[#unlocked + 1] = id
    local extra = {}
    if nodes ~= '' then extra = {'nodes', nodes} end
    local cx = f[5]
    if kind == O_COMPLETED then
      extra[#extra + 1] = 'res'
      extra[#extra + 1] = stored
      terminal(id, S_COMPLETED, EV_END, stored, now, extra)
    elseif kind == O_FAILED then
      extra[#extra + 1] = 'err'
      extra[#extra + 1] = stored
      local att = tonumber(f[3])
      if ARGV[i + 6] == '1' and not cx and att < tonumber(f[4]) then
        -- policy.retry_delay_s
        local delay = math.min(CFG.backoff_ms * 2 ^ math.min(att - 1, RETRY_EXPONENT_CAP),
          RETRY_DELAY_CAP_MS)
        delay = math.floor(delay * (1 + JITTER_SHARE * tonumber(ARGV[i + 7])))
        redis.call('HSET', jk, 'st', S_DELAYED, unpack(extra))
        redis.call('ZADD', K_DELAYED, now + delay, id)
      else
        terminal(id, S_FAILED, EV_ERROR, event_data, now, extra)
      end
    elseif kind == O_CANCELLED then
      if #extra > 0 then redis.call('HSET', jk, unpack(extra)) end
      local reason = cx
      if not reason then
        reason = stored
        if reason == '' then reason = DEFAULT_CANCEL_REASON end
      end
      finish_cancelled(id, reason, now)
    elseif cx then
      if #extra > 0 then redis.call('HSET', jk, unpack(extra)) end
      finish_cancelled(id, cx, now)
    else
      -- Requeue (shutdown drain): next in line, the attempt not counted.
      redis.call('HDEL', jk, 'tok')
      redis.call('HSET', jk, 'st', S_WAITING, 'att', tonumber(f[3]) - 1, unpack(extra))
      to_wait(id, f[6], true)
      rang = true
    end
  end
  i = i + 8
end
call_in_parts('ZREM', K_ACTIVE, unlocked, 1000)
if rang then ring_workers() end
announce()
return results
