-- Forget finished jobs, oldest first: up to `limit` of those that ended in
-- `status` at least `age` ms ago ('' : any). Args: status, age ms or '', limit.
-- Returns how many were removed (the caller loops while it is `limit`).
local set = finished_key(ARGV[A])
local cutoff = '+inf'
if ARGV[A + 1] ~= '' then cutoff = now_ms() - tonumber(ARGV[A + 1]) end
local ids = redis.call('ZRANGEBYSCORE', set, '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[A + 2]))
if #ids == 0 then return 0 end
call_in_parts('ZREM', set, ids, 1000)
local doomed = {}
for _, id in ipairs(ids) do
  doomed[#doomed + 1] = job_key(id)
  doomed[#doomed + 1] = events_key(id)
  if #doomed >= 500 then
    redis.call('DEL', unpack(doomed))
    doomed = {}
  end
end
if #doomed > 0 then redis.call('DEL', unpack(doomed)) end
return #ids
