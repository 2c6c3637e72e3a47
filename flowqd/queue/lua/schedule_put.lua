-- Store a schedule. Args: id, definition (JSON), due ms.
-- The same definition again changes nothing (its due time and paused state
-- stay) and returns 0; a new one is due at the given time; a changed one
-- starts again there, unless paused (it stays paused). Returns 1 then.
local id, doc, due = ARGV[A], ARGV[A + 1], ARGV[A + 2]
local old = redis.call('HGET', K_SCHEDULES, id)
if old == doc then return 0 end
local running = redis.call('ZSCORE', K_SCHEDULE_DUE, id)
redis.call('HSET', K_SCHEDULES, id, doc)
if not old or running then redis.call('ZADD', K_SCHEDULE_DUE, due, id) end
return 1
