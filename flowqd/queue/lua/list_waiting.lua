-- Ids of waiting jobs, last to be claimed first (newest first when no job has
-- a priority): lower priorities, the FIFO list, higher priorities.
-- Args: offset, limit. Returns the ids.
local offset, limit = tonumber(ARGV[A]), tonumber(ARGV[A + 1])
local out = {}
for _, part in ipairs({K_WAIT_LOW, K_WAIT, K_WAIT_HIGH}) do
  if limit <= 0 then break end
  local size
  if part == K_WAIT then size = redis.call('LLEN', part) else size = redis.call('ZCARD', part) end
  if offset < size then
    local ids
    if part == K_WAIT then
      ids = redis.call('LRANGE', part, offset, offset + limit - 1)
    else
      ids = redis.call('ZREVRANGE', part, offset, offset + limit - 1)
    end
    for _, id in ipairs(ids) do out[#out + 1] = id end
    limit = limit - #ids
    offset = 0
  else
    offset = offset - size
  end
end
return out
