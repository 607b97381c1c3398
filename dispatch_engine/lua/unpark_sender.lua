-- Unpark a sender (its account was fixed or a user resumed it): due again at its head's time.
-- KEYS: 1 ready, 2 resume, 3 sender zset
-- ARGV: 1 sender, 2 wake channel
redis.call('HDEL', KEYS[2], ARGV[1])
local head = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if head[1] then
  redis.call('ZADD', KEYS[1], head[2], ARGV[1])
  redis.call('PUBLISH', ARGV[2], head[2])
end
return 1
