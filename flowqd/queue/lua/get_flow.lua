-- A flow document. Args: flow id, version or '' (current). Returns {version, doc} or nil.
local id, version = ARGV[A], ARGV[A + 1]
if version == '' then
  version = redis.call('HGET', K_FLOWS, id)
  if not version then return false end
end
local doc = redis.call('GET', flow_key(id, version))
if not doc then return false end
return {tonumber(version), doc}
