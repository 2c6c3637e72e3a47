-- Move up to N waiting jobs to active, each locked with its own token.
-- Args: worker id, N, lock ttl ms, token base. Returns nil while paused,
-- else a flat list: id, token, {JOB_FIELDS values}, ...
if redis.call('EXISTS', K_PAUSED) == 1 then return false end
local worker, want, ttl, base = ARGV[A], tonumber(ARGV[A + 1]), tonumber(ARGV[A + 2]), ARGV[A + 3]
local now = now_ms()
local out = {}
local got = 0
while got < want do
  local ids = redis.call('RPOP', K_WAIT, want - got)
  if not ids then break end
  for _, id in ipairs(ids) do
    local jk = job_key(id)
    local f = redis.call('HMGET', jk, 'st', 'cx')
    -- Anything but a waiting job is a stale entry: dropped.
    if f[1] == 'waiting' then
      if f[2] then
        -- Cancelled while it was being put back: it never runs again.
        finish_cancelled(id, f[2], now)
      else
        got = got + 1
        local token = base .. ':' .. got
        redis.call('HINCRBY', jk, 'att', 1)
        redis.call('HSET', jk, 'st', 'active', 'sat', now, 'wk', worker, 'tok', token)
        redis.call('ZADD', K_ACTIVE, now + ttl, id)
        out[#out + 1] = id
        out[#out + 1] = token
        out[#out + 1] = redis.call('HMGET', jk, unpack(JOB_FIELDS))
      end
    end
  end
end
-- More waiting: wake the next idle worker too.
if redis.call('LLEN', K_WAIT) > 0 then ring_workers() end
announce()
return out
