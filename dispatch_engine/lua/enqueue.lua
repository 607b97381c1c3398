-- Add dispatch ids of one sender, idempotently: an id already queued or leased is left alone.
-- KEYS: 1 ready, 2 lease_info, 3 resume, 4 caps, 5 sender zset
-- ARGV: 1 sender, 2 cap (0 = none), 3 wake channel, then id1, due1, id2, due2, ...
-- Returns the number of ids added. Publishes the sender's new ready time on the wake
-- channel when it moved earlier, so sleeping workers re-arm their timers.
local sender = ARGV[1]
local added = 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HEXISTS', KEYS[2], id) == 0 then
    added = added + redis.call('ZADD', KEYS[5], 'NX', ARGV[i + 1], id)
  end
end
if tonumber(ARGV[2]) > 0 then redis.call('HSET', KEYS[4], sender, ARGV[2]) end
local head = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
if not head[1] then return added end
local score = tonumber(head[2])
local resume = redis.call('HGET', KEYS[3], sender)
if resume and tonumber(resume) > score then score = tonumber(resume) end
local old = redis.call('ZSCORE', KEYS[1], sender)
if not old or tonumber(old) > score then
  redis.call('ZADD', KEYS[1], score, sender)
  redis.call('PUBLISH', ARGV[3], score)
end
return added
