-- Extend the leases a worker still holds (a slow send must not be reaped from under it).
-- KEYS: 1 leases, 2 lease_info ; ARGV: 1 lease_ms, then pairs id, token
-- Returns the ids whose lease is no longer this worker's.
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local info = redis.call('HGET', KEYS[2], ARGV[i])
  if info and string.sub(info, 1, #ARGV[i + 1] + 1) == ARGV[i + 1] .. ':' then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
