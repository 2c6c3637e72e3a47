-- Store a flow version. Args: flow id, document. Returns the version; the
-- same document as the current version returns the current version.
local id, doc = ARGV[A], ARGV[A + 1]
local current = redis.call('HGET', K_FLOWS, id)
if current and redis.call('GET', flow_key(id, current)) == doc then
  return tonumber(current)
end
local version = redis.call('HINCRBY', K_FLOW_SEQ, id, 1)
redis.call('SET', flow_key(id, version), doc)
redis.call('HSET', K_FLOWS, id, version)
return version
