-- Shared by settle and reap (prepended): return a dispatch's pacing grant to the windows it
-- was charged to, when the email was not sent. A grant is a space-separated list of
-- counters ("key") and sliding-window entries ("key=member"), written by pace.lua.
local function refund_grant(grants, id)
  local rec = redis.call('HGET', grants, id)
  if not rec then return end
  redis.call('HDEL', grants, id)
  for item in string.gmatch(rec, '%S+') do
    local eq = string.find(item, '=', 1, true)
    if eq then
      redis.call('ZREM', string.sub(item, 1, eq - 1), string.sub(item, eq + 1))
    elseif tonumber(redis.call('GET', item) or '0') > 0 then
      redis.call('DECR', item)  -- a counter that expired (its window passed) stays gone
    end
  end
end
