-- Move up to N waiting jobs to active, each locked with its own token (K_LOCKS):
-- the call's token base (new for each call), ':' and the job's id.
-- Args: worker id, N, lock ttl ms, token base. Returns nil while paused,
-- else a flat list: the claim time (ms), then per job its id and its record
-- as HGETALL gave it before the claim wrote st, att, sat and wk: its pairs,
-- or a new job's values joined by NULs in one string (codec.decode_claim, which
-- makes the token and the attempt, att + 1, the same way).
if redis.call('EXISTS', K_PAUSED) == 1 then return false end
local worker, want, ttl, base = ARGV[A], tonumber(ARGV[A + 1]), tonumber(ARGV[A + 2]), ARGV[A + 3]
local now = now_ms()
local deadline = string.format('%.0f', now + ttl)
local out = {now}
-- (deadline, id) pairs for K_ACTIVE and (id, token) pairs for K_LOCKS: one
-- ZADD and one HSET at the end, keys.KEEPER first (again: a no-op once
-- there), which keeps both keys out of Redis's compact encoding.
local deadlines = {'inf', KEEPER}
local locks = {KEEPER_FIELD, KEEPER}
local got = 0
-- The next n ids in claim order: higher priorities, then the FIFO list of
-- priority 0, then lower priorities; nil when none waits.
local function next_ids(n)
  n = int_text(n)
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
    -- HGETALL, not HMGET of the fields decode_claim reads: a waiting record
    -- lacks most of them, and each field it lacks costs HMGET a scan of the
    -- whole record (bench/drain.py: ~1 us a job).
    local all = redis.call('HGETALL', jk)
    -- Passed back as it came: mapping it to named slots in Lua, and
    -- returning the slots it lacks, cost Redis more than the pairs.
    local st, cx, att, ev = nil, nil, nil, nil
    local record = all
    if #all == 12 and all[1] == 'flow' and all[3] == 'ver' and all[5] == 'in'
        and all[7] == 'st' and all[9] == 'max' and all[11] == 'ct'
        and not string.find(all[6], '\0', 1, true) and not string.find(all[2], '\0', 1, true) then
      -- A job's record as enqueue.lua wrote it (its fields in the order
      -- written, which HGETALL keeps for a listpack), whose flow id and
      -- inputs hold no NUL (the other values are numbers and the status):
      -- its values but st go back as one string joined by NULs
      -- (codec.decode_claim). Each element of a reply costs Redis more than
      -- its share of the join, and one concatenation less than table.concat.
      st = all[8]
      record = all[2] .. '\0' .. all[4] .. '\0' .. all[6] .. '\0' .. all[10] .. '\0' .. all[12]
    else
      for k = 1, #all, 2 do
        local name = all[k]
        if name == 'st' then
          st = all[k + 1]
        elseif name == 'cx' then
          cx = all[k + 1]
        elseif name == 'att' then
          att = all[k + 1]
        elseif name == 'ev' then
          ev = true
        end
      end
    end
    -- Anything but a waiting job is a stale entry: dropped.
    if st == S_WAITING then
      if cx then
        -- Cancelled while it was being put back: it never runs again.
        finish_cancelled(id, cx, now)
      else
        got = got + 1
        -- Not a count: Lua formats a number for a string with sprintf.
        local token = base .. ':' .. id
        local attempts = '1'
        if att then attempts = tostring(tonumber(att) + 1) end
        redis.call('HSET', jk, 'st', S_ACTIVE, 'att', attempts, 'sat', now_text(), 'wk', worker)
        deadlines[#deadlines + 1] = deadline
        deadlines[#deadlines + 1] = id
        locks[#locks + 1] = id
        if ev then locks[#locks + 1] = token .. EVENTFUL_MARK else locks[#locks + 1] = token end
        out[#out + 1] = id
        out[#out + 1] = record
      end
    end
  end
end
if got > 0 then
  call_in_parts('ZADD', K_ACTIVE, deadlines, 1000)
  call_in_parts('HSET', K_LOCKS, locks, 1000)
end
-- More waiting: wake the next idle worker too.
if redis.call('LLEN', K_WAIT) > 0 or redis.call('ZCARD', K_WAIT_HIGH) > 0
    or redis.call('ZCARD', K_WAIT_LOW) > 0 then
  ring_workers()
end
announce()
return out
