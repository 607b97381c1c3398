-- Take ids of one sender out of its queue (a paused or cancelled campaign); leases stay.
-- KEYS: 1 ready, 2 resume, 3 sender zset ; ARGV: 1 sender, then ids
-- Returns how many were removed.
local removed = 0
for i = 2, #ARGV do removed = removed + redis.call('ZREM', KEYS[3], ARGV[i]) end
local head = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if not head[1] then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  local score = tonumber(head[2])
  local resume = redis.call('HGET', KEYS[2], ARGV[1])
  if resume and tonumber(resume) > score then score = tonumber(resume) end
  redis.call('ZADD', KEYS[1], score, ARGV[1])
end
return removed
