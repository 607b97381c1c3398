-- Park a sender until `until_ms`: it is not claimed before then; its backlog keeps its order.
-- KEYS: 1 ready, 2 resume, 3 sender zset
-- ARGV: 1 sender, 2 until_ms
local until_ms = tonumber(ARGV[2])
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current and tonumber(current) > until_ms then
  until_ms = tonumber(current)  -- an earlier time never shortens a park
else
  redis.call('HSET', KEYS[2], ARGV[1], until_ms)
end
local head = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if head[1] then
  redis.call('ZADD', KEYS[1], math.max(tonumber(head[2]), until_ms), ARGV[1])
end
return 1
