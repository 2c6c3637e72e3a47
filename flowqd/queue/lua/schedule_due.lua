-- Running schedules due by now. Args: now ms, limit.
-- Returns {earliest due time after now or nil, id, due ms, definition, ...}.
local now = ARGV[A]
local due = redis.call('ZRANGEBYSCORE', K_SCHEDULE_DUE, '-inf', now, 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[A + 1]))
local out = {false}
for i = 1, #due, 2 do
  local doc = redis.call('HGET', K_SCHEDULES, due[i])
  if doc then
    out[#out + 1] = due[i]
    out[#out + 1] = due[i + 1]
    out[#out + 1] = doc
  end
end
local later = redis.call('ZRANGEBYSCORE', K_SCHEDULE_DUE, '(' .. now, '+inf', 'WITHSCORES',
  'LIMIT', 0, 1)
if #later > 0 then out[1] = later[2] end
return out
