-- Return leases that expired (their worker died or stalled) to their sender's queue.
-- KEYS: 1 ready, 2 leases, 3 lease_info, 4 resume, 5 stalls, 6 pacing grants
-- A worker that died between its pacing grant and the send leaves the grant charged: it is
-- returned to its windows here (refund_grant, from refund.lua), so a crash burns no budget.
-- ARGV: 1 sender key prefix, 2 batch size, 3 max stalls, 4 wake channel
-- Returns {reaped_count, dead_id1, dead_id2, ...}: ids that stalled more than max stalls are
-- not re-queued; the caller fails them in PostgreSQL.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {#expired}
local touched = {}
for _, id in ipairs(expired) do
  local info = redis.call('HGET', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  local stalls = redis.call('HINCRBY', KEYS[5], id, 1)
  refund_grant(KEYS[6], id)
  if info then
    local c1 = string.find(info, ':', 1, true)
    local c2 = string.find(info, ':', c1 + 1, true)
    local sender = string.sub(info, c1 + 1, c2 - 1)
    if stalls > tonumber(ARGV[3]) then
      redis.call('HDEL', KEYS[5], id)
      out[#out + 1] = id
    else
      redis.call('ZADD', ARGV[1] .. sender, string.sub(info, c2 + 1), id)
      touched[sender] = true
    end
  end
end
for sender in pairs(touched) do
  local head = redis.call('ZRANGE', ARGV[1] .. sender, 0, 0, 'WITHSCORES')
  local score = tonumber(head[2])
  local resume = redis.call('HGET', KEYS[4], sender)
  if resume and tonumber(resume) > score then score = tonumber(resume) end
  redis.call('ZADD', KEYS[1], score, sender)
end
if next(touched) then redis.call('PUBLISH', ARGV[4], now) end
return out
