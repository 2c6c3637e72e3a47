-- Forget finished jobs, oldest first: up to `limit` of those that ended in
-- `status` at least `age` ms ago ('' : any). Args: status, age ms or '', limit.
-- Returns how many were removed (the caller loops while it is `limit`).
local cutoff = '+inf'
if ARGV[A + 1] ~= '' then cutoff = now_ms() - tonumber(ARGV[A + 1]) end
return forget_older(ARGV[A], cutoff, tonumber(ARGV[A + 2]))
