-- Append events, then record outcomes. Args: R (event runs), per run: job
-- id, event count C, then C pairs (name, data); then per outcome
-- (OUTCOME_ARITY[kind] arguments): id, token, kind, the job's events held
-- in one argument or '' (codec._held: they are in no run), nodes JSON or '', then
-- by kind: completed (c) the result JSON; completed with a conversation
-- turn (O_TURN) the result JSON and TURN_ARGS more (see add_turn); failed
-- (f) the error JSON, the error event's JSON, and the retry delay's jitter
-- in [0, 1) or '' when it is not to be retried; cancelled (x) the reason;
-- requeue (r) nothing more.
-- A run's last 'progress' event also goes on the job record (field prog).
-- Returns 1/0 per outcome (0: token is not the job's current one: refused).
local now = now_ms()
local n_args = #ARGV  -- a binary search each time it is asked
local n_runs = tonumber(ARGV[A])
-- Every job this call names, in runs or outcomes, once each: their locks
-- are read at once below (common.lua's read_locks).
local named, ids = {}, {}
local function name_job(id)
  if not named[id] then
    named[id] = true
    ids[#ids + 1] = id
  end
end
local first_outcome = A + 1
for _ = 1, n_runs do
  name_job(ARGV[first_outcome])
  first_outcome = first_outcome + 2 + 2 * tonumber(ARGV[first_outcome + 1])
end

-- The arguments after an outcome's TURN_MARK: flow id, conversation name
-- (owner/session), the encoded turn (cut to fit by flush_args), then
-- memory.max_turns, max_bytes, ttl in ms and max_sessions. Appends the turn,
-- drops the oldest while over either bound, and keeps the flow's index of
-- conversations within ttl and max_sessions (forgetting the least recently
-- active), everything expiring ttl after its last turn.
local function add_turn(t)
  local flow, conv, turn = ARGV[t], ARGV[t + 1], ARGV[t + 2]
  local max_turns, max_bytes = tonumber(ARGV[t + 3]), tonumber(ARGV[t + 4])
  local ttl, max_sessions = tonumber(ARGV[t + 5]), tonumber(ARGV[t + 6])
  local lk, bk = conv_key(flow, conv), conv_bytes_key(flow, conv)
  local n = redis.call('RPUSH', lk, turn)
  local size = redis.call('INCRBY', bk, #turn)
  local dropped = false
  while n > 1 and (n > max_turns or size > max_bytes) do
    size = size - #redis.call('LPOP', lk)
    n = n - 1
    dropped = true
  end
  if dropped then redis.call('SET', bk, size, 'PX', ttl) else redis.call('PEXPIRE', bk, ttl) end
  redis.call('PEXPIRE', lk, ttl)
  local index = convs_key(flow)
  -- Scores strictly increasing (as finish_score does), so that conversations
  -- written in the same millisecond still list newest first.
  local score = now
  local top = redis.call('ZREVRANGE', index, 0, 0, 'WITHSCORES')
  if top[2] and tonumber(top[2]) >= score then score = tonumber(top[2]) + 1 / 1024 end
  redis.call('ZADD', index, score, conv)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl)
  local excess = redis.call('ZCARD', index) - max_sessions
  if excess > 0 then
    -- The least recently active, never the one just written (it may tie).
    local doomed, gone = {}, {}
    for _, old in ipairs(redis.call('ZRANGE', index, 0, excess)) do
      if #gone < excess and old ~= conv then
        gone[#gone + 1] = old
        doomed[#doomed + 1] = conv_key(flow, old)
        doomed[#doomed + 1] = conv_bytes_key(flow, old)
      end
    end
    call_in_parts('ZREM', index, gone, 1000)
    for start = 1, #doomed, 500 do
      redis.call('DEL', unpack(doomed, start, math.min(start + 499, #doomed)))
    end
  end
  redis.call('PEXPIRE', index, ttl)
end

do
  local k = first_outcome
  while k <= n_args do
    name_job(ARGV[k])
    k = k + OUTCOME_ARITY[ARGV[k + 2]]
  end
end
-- Job id -> its lock's value (a job is active while it has one); false once
-- this call ends the hold.
local lock = {}
do
  local values = read_locks(ids)
  for k = 1, #ids do lock[ids[k]] = values[k] end
end
-- Jobs getting their first events in this call, whose record needs ``ev``
-- and lock the mark.
local first_events = {}
local i = A + 1
for _ = 1, n_runs do
  local id, count = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  -- Never after the terminal event: to an active job, whoever holds it.
  local held_by = lock[id]
  if held_by then
    if not fresh[id] and not first_events[id] and eventless(held_by) then
      fresh[id] = true
      first_events[id] = true
    end
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
local unlocked = {}  -- left active: removed from K_ACTIVE and K_LOCKS at once, at the end
local rang = false
while i <= n_args do
  local id, token, kind, held, nodes = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local stored = ARGV[i + 5]
  local held_by = lock[id]
  if held == '' then held = nil end
  if not holds(held_by, token) then
    results[#results + 1] = 0
    -- Held events go where a run's would: to an active job, whoever holds it.
    if held and held_by then
      if not fresh[id] and not first_events[id] and eventless(held_by) then
        fresh[id] = true
        first_events[id] = true
      end
      add_held(id, held)
    end
  else
    results[#results + 1] = 1
    lock[id] = false
    unlocked[#unlocked + 1] = id
    local jk = job_key(id)
    -- No events before this call's (fresh may already say so: a run of this call).
    if eventless(held_by) then fresh[id] = true end
    -- Every branch below sets ev with its own HSET or ends the job
    -- (terminal(): a finished job's ev is never read).
    if first_events[id] then first_events[id] = nil end
    if kind == O_COMPLETED or kind == O_TURN then
      -- Made whole: a table that grows is rehashed.
      local fields
      if nodes ~= '' then fields = {'res', stored, 'nodes', nodes} else fields = {'res', stored} end
      terminal(id, S_COMPLETED, EV_END, stored, now, fields, held, jk)
      if kind == O_TURN then add_turn(i + 6) end
    else
      -- What the other outcomes need of the record (a field it lacks costs
      -- Redis a scan of the whole record: these are the rare outcomes).
      local f = redis.call('HMGET', jk, 'cx', 'att', 'max', 'pri')
      local cx = f[1]
      local extra = {}
      if nodes ~= '' then extra = {'nodes', nodes} end
      if kind == O_FAILED then
        extra[#extra + 1] = 'err'
        extra[#extra + 1] = stored
        local att = tonumber(f[2])
        local jitter = ARGV[i + 7]
        if jitter ~= '' and not cx and att < tonumber(f[3]) then
          if held then add_held(id, held) end
          -- policy.retry_delay_s
          local delay = math.min(CFG.backoff_ms * 2 ^ math.min(att - 1, RETRY_EXPONENT_CAP),
            RETRY_DELAY_CAP_MS)
          delay = math.floor(delay * (1 + JITTER_SHARE * tonumber(jitter)))
          redis.call('HSET', jk, 'st', S_DELAYED, 'ev', '1', unpack(extra))
          redis.call('ZADD', K_DELAYED, now + delay, id)
        else
          terminal(id, S_FAILED, EV_ERROR, ARGV[i + 6], now, extra, held, jk)
        end
      elseif kind == O_CANCELLED then
        if #extra > 0 then redis.call('HSET', jk, unpack(extra)) end
        local reason = cx
        if not reason then
          reason = stored
          if reason == '' then reason = DEFAULT_CANCEL_REASON end
        end
        finish_cancelled(id, reason, now, held)
      elseif cx then
        if #extra > 0 then redis.call('HSET', jk, unpack(extra)) end
        finish_cancelled(id, cx, now, held)
      else
        -- Requeue (shutdown drain): next in line, the attempt not counted.
        if held then add_held(id, held) end
        redis.call('HSET', jk, 'st', S_WAITING, 'att', tonumber(f[2]) - 1, 'ev', '1', unpack(extra))
        to_wait(id, f[4], true)
        rang = true
      end
    end
  end
  i = i + OUTCOME_ARITY[kind]
end
local marked = {}
for id, _ in pairs(first_events) do
  redis.call('HSET', job_key(id), 'ev', '1')
  marked[#marked + 1] = id
  marked[#marked + 1] = lock[id] .. EVENTFUL_MARK
end
call_in_parts('HSET', K_LOCKS, marked, 1000)
call_in_parts('ZREM', K_ACTIVE, unlocked, 1000)
call_in_parts('HDEL', K_LOCKS, unlocked, 1000)
if rang then ring_workers() end
announce()
return results
