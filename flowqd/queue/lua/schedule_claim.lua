-- Claim due ticks. Args: (id, due ms, next ms) per schedule.
-- A compare-and-set on the stored due time: only a claim that read the
-- current one moves it on (and records it as the last tick), so however many
-- main processes race for a tick, one wins; one that read it before another's
-- claim, a pause, a change or a delete is refused. Returns the ids claimed.
local won = {}
for i = A, #ARGV, 3 do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', K_SCHEDULE_DUE, id)
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    redis.call('ZADD', K_SCHEDULE_DUE, ARGV[i + 2], id)
    redis.call('HSET', K_SCHEDULE_LAST, id, ARGV[i + 1])
    won[#won + 1] = id
  end
end
return won
