-- Claim up to `limit` due dispatch ids, round robin across the due senders, as leases.
-- KEYS: 1 ready, 2 leases, 3 lease_info, 4 token, 5 resume, 6 caps
-- ARGV: 1 limit, 2 lease_ms, 3 sender key prefix
-- Returns {now, next_due, token, id1, sender1, id2, sender2, ...}; next_due is -1 when the
-- queue is empty and is only meaningful when no id was claimed.
-- Sender keys are built from ARGV[3]; they carry the same hash tag as KEYS, so they live
-- in the same cluster slot.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local expiry = now + tonumber(ARGV[2])
local prefix = ARGV[3]

local senders = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
if #senders == 0 then
  local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if head[2] then return {now, head[2], 0} end
  return {now, -1, 0}
end

local token = redis.call('INCR', KEYS[4])
local out = {now, 0, token}
local claimed = 0
local active = senders
-- Rounds: each due sender gets an equal share; what a short sender leaves goes round again.
while claimed < limit and #active > 0 do
  local share = math.max(1, math.floor((limit - claimed) / #active))
  local still = {}
  for _, sender in ipairs(active) do
    if claimed >= limit then break end
    local skey = prefix .. sender
    local take = math.min(share, limit - claimed)
    local cap = redis.call('HGET', KEYS[6], sender)
    if cap then take = math.min(take, tonumber(cap)) end
    local popped = redis.call('ZPOPMIN', skey, take)
    local got, j = 0, 1
    while j < #popped do
      local id, due = popped[j], popped[j + 1]
      if tonumber(due) > now then
        -- not due yet: put it and the rest back untouched
        for k = j, #popped, 2 do redis.call('ZADD', skey, popped[k + 1], popped[k]) end
        break
      end
      redis.call('ZADD', KEYS[2], expiry, id)
      redis.call('HSET', KEYS[3], id, token .. ':' .. sender .. ':' .. due)
      out[#out + 1] = id
      out[#out + 1] = sender
      claimed = claimed + 1
      got = got + 1
      j = j + 2
    end
    if got == take and not cap then still[#still + 1] = sender end
  end
  active = still
end
for _, sender in ipairs(senders) do
  local skey = prefix .. sender
  local head = redis.call('ZRANGE', skey, 0, 0, 'WITHSCORES')
  if head[1] then
    -- served senders go behind the ones still waiting (theirs are older than now)
    local score = math.max(tonumber(head[2]), now)
    local resume = redis.call('HGET', KEYS[5], sender)
    if resume then
      if tonumber(resume) > score then score = tonumber(resume)
      else redis.call('HDEL', KEYS[5], sender) end
    end
    redis.call('ZADD', KEYS[1], score, sender)
  else
    redis.call('ZREM', KEYS[1], sender)
  end
end
return out
