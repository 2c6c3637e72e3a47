-- Shared by every script (after the generated key names and job rules, see
-- redis/scripts.py). ARGV[1..5] are the queue settings, the same for every
-- call; script arguments start at 6.
local CFG = {
  maxlen = ARGV[1],                -- queue.event_stream_max_len
  age_ms = tonumber(ARGV[2]),      -- queue.remove_on_age_s in ms
  keep = tonumber(ARGV[3]),        -- queue.remove_on_count (0: no limit)
  max_stalled = tonumber(ARGV[4]), -- queue.max_stalled
  backoff_ms = tonumber(ARGV[5]),  -- queue.backoff_s in ms
}
local A = 6

-- One clock reading per call: asked again (write_events), it says the same.
local clock_ms, clock_text = nil, nil
local function now_ms()
  if not clock_ms then
    local t = redis.call('TIME')
    clock_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock_ms
end
-- A whole number as text for redis.call, which formats a number argument
-- with %.17g: ~4,000 instructions, against a few hundred for %d.
local function int_text(n) return string.format('%d', n) end

-- The same as text, made once: redis.call formats a number argument anew
-- (%.17g) each time it is passed.
local function now_text()
  if not clock_text then clock_text = string.format('%.0f', now_ms()) end
  return clock_text
end

-- Events this call appends, per job (fields n, d, n, d, ...), in the order
-- added; written by write_events() as one stream entry per job of up to
-- ENTRY_EVENTS events (an XADD costs far more than its size), and the job
-- ids announced once at the end.
local pending = {}
local touched_list = {}
local function add_event(id, name, data)
  local fields = pending[id]
  if not fields then
    fields = {}
    pending[id] = fields
    touched_list[#touched_list + 1] = id
  end
  fields[#fields + 1] = 'n'
  fields[#fields + 1] = name
  fields[#fields + 1] = 'd'
  fields[#fields + 1] = data
end

-- Locks: K_LOCKS holds each active job's token, and nothing for any other
-- job, so one HMGET checks a whole flush's jobs (a read of each job's record
-- cost Redis more than the rest of the check). The token is followed by
-- EVENTFUL_MARK once the job has events (the record's ``ev``, mirrored).
-- The values of ``ids``' locks, false where a job has none (is not active).
local function read_locks(ids)
  local values = {}
  for start = 1, #ids, 1000 do
    local part = redis.call('HMGET', K_LOCKS, unpack(ids, start, math.min(start + 999, #ids)))
    for k = 1, #part do values[start + k - 1] = part[k] end
  end
  return values
end

-- Whether a lock's value is ``token``'s, with or without the mark.
local function holds(value, token)
  if value == token then return true end
  return value and #value == #token + 1 and string.sub(value, 1, -2) == token or false
end

-- Whether a job whose lock has this value has no events yet.
local EVENTFUL_BYTE = string.byte(EVENTFUL_MARK)
local function eventless(value)
  return string.byte(value, -1) ~= EVENTFUL_BYTE
end

-- Jobs the caller knows to have no events yet: their record has no ``ev``
-- field (nor their lock the mark), which every script that appends events
-- to a job that may run again sets (retry.lua in an HSET it makes anyway,
-- flush.lua otherwise; claim.lua marks the lock of a job whose record has it).
-- A finished job's is never read, so terminal() writes none: retry.lua
-- sets it when it puts the job back. Their events stream is empty, and
-- the record has no ``evs``.
local fresh = {}

-- An entry of n > 1 events takes an id <ms>-<seq> with seq >= n - 1 above
-- the stream's last one, so that the n - 1 ids below it are free for its
-- other events (codec.ENTRY_EVENTS). ``top`` is that last id as (ms string,
-- seq), if this call wrote it. Returns the id added.
local function add_entry(key, fields, first, last, top_ms, top_seq, empty)
  local n = (last - first + 1) / 4
  local id = '*'
  if n > 1 then
    if not top_ms and not empty then
      local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', '1')[1]
      if top then
        top_ms, top_seq = string.match(top[1], '^(%d+)-(%d+)$')
        top_seq = tonumber(top_seq)
      end
    end
    local now = now_text()
    if top_ms and tonumber(top_ms) >= now_ms() then
      id = top_ms .. '-' .. (top_seq + n)
    else
      -- Any stream's first entry, and the usual later one: a millisecond of its own.
      id = now .. '-' .. (n - 1)
    end
  end
  return redis.call('XADD', key, 'MAXLEN', '~', CFG.maxlen, id, unpack(fields, first, last))
end

local function write_events()
  local per_entry = 4 * ENTRY_EVENTS
  for _, id in ipairs(touched_list) do
    -- false: packed into the job's record by terminal(), no stream at all.
    local fields = pending[id]
    if fields then
      local key = events_key(id)
      local ms, seq = nil, nil
      for first = 1, #fields, per_entry do
        local last = math.min(first + per_entry - 1, #fields)
        local added = add_entry(key, fields, first, last, ms, seq, fresh[id])
        if last < #fields then
          ms, seq = string.match(added, '^(%d+)-(%d+)$')
          seq = tonumber(seq)
        end
      end
    end
  end
end

-- A job's events as the one stream entry add_entry would write to its empty
-- stream, packed into a string for the record's ``evs`` field
-- (codec.unpack_entry): its id, then each event's name and data, joined by
-- NUL bytes. Nil when they take more than one entry, or a name holds a NUL
-- (data is JSON text, which never does). No number is turned into text on
-- the way (SEQ_TEXT is generated): Redis 7.0's Lua does that with sprintf,
-- ~4,700 instructions a number.
local function pack_entry(fields)
  local n = #fields / 4
  if n > ENTRY_EVENTS then return nil end
  local parts = {now_text() .. '-' .. SEQ_TEXT[n]}
  for k = 2, #fields, 4 do
    local name = fields[k]
    if string.find(name, '\0', 1, true) then return nil end
    parts[#parts + 1] = name
    parts[#parts + 1] = fields[k + 2]
  end
  return table.concat(parts, '\0')
end

-- The inverse, for a script that appends to a stream whose job's record
-- holds its events (retry.lua): the entry goes to the stream first, so ids
-- stay ordered and nothing is read twice.
local function unpack_entry_to_stream(id, packed)
  local values, at = {}, 1
  while true do
    local nul = string.find(packed, '\0', at, true)
    values[#values + 1] = string.sub(packed, at, (nul or 0) - 1)
    if not nul then break end
    at = nul + 1
  end
  local fields = {}
  for k = 2, #values, 2 do
    fields[#fields + 1] = 'n'
    fields[#fields + 1] = values[k]
    fields[#fields + 1] = 'd'
    fields[#fields + 1] = values[k + 1]
  end
  redis.call('XADD', events_key(id), values[1], unpack(fields))
  redis.call('HDEL', job_key(id), 'evs')
end

-- Appends the events a flush held in one argument for a job
-- (codec._held): '-<k>', then NUL, name, NUL, data for each.
local function add_held(id, held)
  local at = string.find(held, '\0', 1, true) + 1
  while true do
    local gap = string.find(held, '\0', at, true)
    local stop = string.find(held, '\0', gap + 1, true)
    add_event(id, string.sub(held, at, gap - 1), string.sub(held, gap + 1, (stop or 0) - 1))
    if not stop then return end
    at = stop + 1
  end
end

local function ring_workers()
  redis.call('ZADD', K_MARKER, '0', MARKER_MEMBER)
end

-- Put a job in line to be claimed. Priority 0 (pri nil or '0'): the FIFO list,
-- at its back, or with ``again`` at its front (it was claimed and is back:
-- it has waited longest). Other priorities: K_WAIT_HIGH (> 0) or K_WAIT_LOW
-- (< 0), scored as policy.priority_score; ``again`` keeps the job's score.
local function to_wait(id, pri, again)
  local p = tonumber(pri or '0')
  if p == 0 then
    if again then redis.call('RPUSH', K_WAIT, id) else redis.call('LPUSH', K_WAIT, id) end
    return
  end
  local jk = job_key(id)
  local score = again and redis.call('HGET', jk, 'psc')
  if not score then
    local level = -p - 1
    if p > 0 then level = PRIORITY_MAX - p end
    local seq = redis.call('INCR', K_PRIORITY_SEQ) % PRIORITY_SEQ_SPAN
    score = string.format('%.0f', level * PRIORITY_SEQ_SPAN + seq)
    redis.call('HSET', jk, 'psc', score)
  end
  if p > 0 then redis.call('ZADD', K_WAIT_HIGH, score, id) else redis.call('ZADD', K_WAIT_LOW, score, id) end
end

-- Take a waiting job out of line (cancel, delete).
local function from_wait(id, pri)
  local p = tonumber(pri or '0')
  if p == 0 then
    redis.call('LREM', K_WAIT, 0, id)
  elseif p > 0 then
    redis.call('ZREM', K_WAIT_HIGH, id)
  else
    redis.call('ZREM', K_WAIT_LOW, id)
  end
end

-- Scores of the finished sets: the finish time in ms, made strictly
-- increasing (in 1/1024 ms steps) so that jobs ending in the same
-- millisecond keep their order and retention by count drops the oldest.
-- Returned as text: redis.call formats a number argument with %.17g, which
-- for a fractional score was the costliest step of a finished job's ZADD
-- (callgrind of redis-server during bench/drain.py: ~2.5% of its work).
-- Whole ms plus k/1024 is exact in a double, and so in this text, which
-- is also what K_FINISH_CLOCK keeps (finish_text).
local finish_clock, finish_text = nil, nil
local function finish_score(now)
  if not finish_clock then
    finish_clock = tonumber(redis.call('GET', K_FINISH_CLOCK) or '0')
  end
  local score = now
  if score <= finish_clock then score = finish_clock + 1 / 1024 end
  finish_clock = score
  local whole = math.floor(score)
  local text = now_text()
  if whole ~= clock_ms then text = int_text(whole) end
  local steps = (score - whole) * 1024
  if steps ~= 0 then text = text .. (STEP_TEXT[steps] or string.format('.%010d', steps * 9765625)) end
  finish_text = text
  return text
end

-- Per finished set, the (score, id) pairs this call adds: one ZADD per set
-- in announce() instead of one per job (each redis.call costs more than the
-- command itself).
local to_finish = {}

-- Calls with many members, in parts: Lua's unpack() has a stack limit.
local function call_in_parts(command, key, members, per_call)
  for start = 1, #members, per_call do
    redis.call(command, key, unpack(members, start, math.min(start + per_call - 1, #members)))
  end
end

-- End a job: status, finish time (plus the caller's ``fields``), the one
-- terminal event, finished set. Its lock in K_LOCKS is the caller's to
-- drop. The finished sets are written, and trimmed by count and age, in
-- announce(). No TTL: see forget_older().
local NO_FIELDS = {}
local function terminal(id, status, event, data, now, fields, held, jk)
  jk = jk or job_key(id)
  local finished = now
  if now == clock_ms then finished = now_text() end
  -- A job whose every event comes in this call (the usual short job) keeps
  -- them in its record, not in a stream: a stream created and deleted per
  -- job cost Redis about an eighth of its work per job (bench/drain.py),
  -- and 4 KB each on Redis 7.0.
  -- Nothing appends to a job after its terminal event within a call.
  local evs = nil
  if held and fresh[id] and not pending[id] then
    -- pack_entry's string, made of the caller's (codec._held) in one go;
    -- announced as add_event's would be, with nothing for write_events.
    evs = now_text() .. held .. '\0' .. event .. '\0' .. data
    pending[id] = false
    touched_list[#touched_list + 1] = id
  else
    if held then add_held(id, held) end
    add_event(id, event, data)
    if fresh[id] then
      evs = pack_entry(pending[id])
      if evs then pending[id] = false end
    end
  end
  -- evs as an argument of its own, not appended to ``fields``: a table
  -- that grows is rehashed.
  if evs then
    redis.call('HSET', jk, 'st', status, 'ft', finished, 'evs', evs, unpack(fields or NO_FIELDS))
  else
    redis.call('HSET', jk, 'st', status, 'ft', finished, unpack(fields or NO_FIELDS))
  end
  local adds = to_finish[status]
  if not adds then
    adds = {}
    to_finish[status] = adds
  end
  adds[#adds + 1] = finish_score(now)
  adds[#adds + 1] = id
end

-- Delete finished jobs' records and streams.
local function forget(ids)
  local doomed = {}
  for i = 1, #ids do
    doomed[#doomed + 1] = job_key(ids[i])
    doomed[#doomed + 1] = events_key(ids[i])
    if #doomed >= 500 then
      redis.call('DEL', unpack(doomed))
      doomed = {}
    end
  end
  if #doomed > 0 then redis.call('DEL', unpack(doomed)) end
end

-- Forget up to ``limit`` jobs of a finished set that ended at or before
-- ``cutoff`` (ms), oldest first; returns how many. Removal by age
-- (queue.remove_on_age_s) is this, run by every call that finishes jobs
-- (for as many as it finishes, and some) and by the stalled check (until
-- none is left), not a TTL per record and stream: a PEXPIRE per job cost
-- Redis about a fifth of its work per job (bench/drain.py: ~31 to ~24 us). As with BullMQ's removal by
-- age, a job may outlive its age while no worker runs (the finished sets
-- grow only when workers finish jobs).
local function forget_older(status, cutoff, limit)
  local set = finished_key(status)
  if type(cutoff) == 'number' then cutoff = int_text(cutoff) end  -- else '+inf'
  local ids = redis.call('ZRANGEBYSCORE', set, '-inf', cutoff, 'LIMIT', '0', int_text(limit))
  if #ids > 0 then
    call_in_parts('ZREM', set, ids, 1000)
    forget(ids)
  end
  return #ids
end

local FINISHED = {S_COMPLETED, S_FAILED, S_CANCELLED}

local function trim_finished()
  local finished = 0
  for status, adds in pairs(to_finish) do
    local set = finished_key(status)
    call_in_parts('ZADD', set, adds, 1000)
    finished = finished + #adds / 2
    if CFG.keep > 0 then
      local excess = redis.call('ZCARD', set) - CFG.keep
      if excess > 0 then
        -- Not ZPOPMIN: it formats every score for its reply, and deletes
        -- members one search each (bench/drain.py --keep: ~4% of Redis's work).
        local last = int_text(excess - 1)
        local old = redis.call('ZRANGE', set, '0', last)
        redis.call('ZREMRANGEBYRANK', set, '0', last)
        forget(old)
      end
    end
  end
  if finished > 0 then
    -- Every set: a status that rarely ends a job is not left to the stalled check.
    local cutoff = now_ms() - CFG.age_ms
    for _, status in ipairs(FINISHED) do forget_older(status, cutoff, finished + 16) end
  end
end

local function finish_cancelled(id, reason, now, held)
  local err = cjson.encode({message = CANCELLED_MESSAGE_PREFIX .. reason, reason = reason})
  terminal(id, S_CANCELLED, EV_CANCELLED, cjson.encode({reason = reason}), now,
    {'cx', reason, 'err', err}, held)
end

-- Every script that may end jobs ends with this.
local function announce()
  write_events()
  trim_finished()
  if finish_text then redis.call('SET', K_FINISH_CLOCK, finish_text) end
  if #touched_list > 0 then
    redis.call('PUBLISH', CH_EVENTS, cjson.encode(touched_list))
  end
end
