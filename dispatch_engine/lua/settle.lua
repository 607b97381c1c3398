-- Settle leases: ack (done) or put back (retry at a due time, or give back at the old one).
-- Only the holder of the current token may act; a stale token is refused.
-- KEYS: 1 ready, 2 leases, 3 lease_info, 4 resume, 5 stalls, 6 pacing grants
-- An ack keeps the email's pacing grant charged (it was attempted); a drop (finished without
-- an attempt: cancelled or paused after its grant), a retry or a give-back returns it to
-- its windows (refund_grant, from refund.lua).
-- ARGV: 1 sender key prefix, 2 wake channel, then triples: id, token, due
--   due = "ack" or "drop" to finish, "" to give back at the original due time, or a due
--   time in ms.
-- Returns the ids whose token was refused.
local prefix = ARGV[1]
local refused = {}
local touched = {}
for i = 3, #ARGV, 3 do
  local id, token, due = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local info = redis.call('HGET', KEYS[3], id)
  local c1 = info and string.find(info, ':', 1, true)
  if not info or string.sub(info, 1, c1 - 1) ~= token then
    refused[#refused + 1] = id
  else
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    if due == 'ack' then
      redis.call('HDEL', KEYS[5], id)
      redis.call('HDEL', KEYS[6], id)
    elseif due == 'drop' then
      redis.call('HDEL', KEYS[5], id)
      refund_grant(KEYS[6], id)
    else
      refund_grant(KEYS[6], id)
      local c2 = string.find(info, ':', c1 + 1, true)
      local sender = string.sub(info, c1 + 1, c2 - 1)
      if due == '' then due = string.sub(info, c2 + 1) end
      redis.call('ZADD', prefix .. sender, due, id)
      touched[sender] = true
    end
  end
end
for sender in pairs(touched) do
  local head = redis.call('ZRANGE', prefix .. sender, 0, 0, 'WITHSCORES')
  local score = tonumber(head[2])
  local resume = redis.call('HGET', KEYS[4], sender)
  if resume and tonumber(resume) > score then score = tonumber(resume) end
  local old = redis.call('ZSCORE', KEYS[1], sender)
  if not old or tonumber(old) > score then
    redis.call('ZADD', KEYS[1], score, sender)
    redis.call('PUBLISH', ARGV[2], score)
  end
end
return refused
