-- Forget one conversation. ARGV[A]: flow id, ARGV[A+1]: conversation name
-- (owner/session). Returns how many turns it had.
local flow, conv = ARGV[A], ARGV[A + 1]
local lk = conv_key(flow, conv)
local n = redis.call('LLEN', lk)
redis.call('DEL', lk, conv_bytes_key(flow, conv))
redis.call('ZREM', convs_key(flow), conv)
return n
