-- Generic cell rate algorithm: one key per limit holding the theoretical
-- arrival time (TAT). A request is allowed while TAT - now stays within the
-- burst allowance; otherwise the answer is how long until it would be.
-- ARGV[A]: limit name, ARGV[A+1]: ms between requests, ARGV[A+2]: burst.
local key = rate_key(ARGV[A])
local interval = tonumber(ARGV[A + 1])
local burst = tonumber(ARGV[A + 2])
local now = now_ms()
local tat = tonumber(redis.call('GET', key) or now)
if tat < now then tat = now end
local allowed_at = tat - interval * (burst - 1)
if now < allowed_at then
  return math.ceil(allowed_at - now)
end
local new_tat = tat + interval
redis.call('SET', key, new_tat, 'PX', math.max(1, math.ceil(new_tat - now)))
return 0
