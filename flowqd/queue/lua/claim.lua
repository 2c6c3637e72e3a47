-- Move up to N waiting jobs to active, each locked with its own token.
-- Args: worker id, N, lock ttl ms, token base. Returns nil while paused,
-- else a flat list: id, token, {CLAIM_FIELDS values but the last two, then
-- sat}, ... (codec.decode_claim).
if redis.call('EXISTS', K_PAUSED) == 1 then return false end
local worker, want, ttl, base = ARGV[A], tonumber(ARGV[A + 1]), tonumber(ARGV[A + 2]), ARGV[A + 3]
local now = now_ms()
local deadline = string.format('%.0f', now + ttl)
local out = {}
local locks = {}  -- (deadline, id) pairs for K_ACTIVE: one ZADD at the end
local got = 0
-- The next n ids in claim order: higher priorities, then the FIFO list of
-- priority 0, then lower priorities; nil when none waits.
local function next_ids(n)
  for _, set in ipairs({K_WAIT_HIGH, false, K_WAIT_LOW}) do
    if set then
      local popped = redis.call('ZPOPMIN', set, n)
      if #popped > 0 then
        local ids = {}
        for k = 1, #popped, 2 do ids[#ids + 1] = popped[k] end
        return ids
      end
    else
      local ids = redis.call('RPOP', K_WAIT, n)
      if ids then return ids end
    end
  end
  return nil
end
while got < want do
  local ids = next_ids(want - got)
  if not ids then break end
  for _, id in ipairs(ids) do
    local jk = job_key(id)
    -- HGETALL, not HMGET of CLAIM_FIELDS: a waiting record lacks most of
    -- them, and each field it lacks costs HMGET a scan of the whole record
    -- (bench/drain.py: ~1 us a job).
    local all = redis.call('HGETALL', jk)
    local f = claim_slots()
    for k = 1, #all, 2 do
      local at = CLAIM_AT[all[k]]
      if at then f[at] = all[k + 1] end
    end
    -- Anything but a waiting job is a stale entry: dropped.
    if f[C_ST] == S_WAITING then
      if f[C_CX] then
        -- Cancelled while it was being put back: it never runs again.
        finish_cancelled(id, f[C_CX], now)
      else
        got = got + 1
        local token = base .. ':' .. got
        local attempts, attempts_text = 1, '1'
        if f[C_ATT] then
          attempts = tonumber(f[C_ATT]) + 1
          attempts_text = tostring(attempts)
        end
        redis.call('HSET', jk, 'st', S_ACTIVE, 'att', attempts_text, 'sat', now_text(), 'wk', worker,
          'tok', token)
        locks[#locks + 1] = deadline
        locks[#locks + 1] = id
        f[C_ATT] = attempts
        -- st and cx are known (active, absent): sat in st's place, cx cut off.
        f[C_ST] = now
        f[C_CX] = nil
        out[#out + 1] = id
        out[#out + 1] = token
        out[#out + 1] = f
      end
    end
  end
end
call_in_parts('ZADD', K_ACTIVE, locks, 1000)
-- More waiting: wake the next idle worker too.
if redis.call('LLEN', K_WAIT) > 0 or redis.call('ZCARD', K_WAIT_HIGH) > 0
    or redis.call('ZCARD', K_WAIT_LOW) > 0 then
  ring_workers()
end
announce()
return out
