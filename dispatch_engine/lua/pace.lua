-- Decide once, for one sender's claimed emails, with every built-in limit together, and
-- charge only what every limit grants. Each grant is recorded under its dispatch id, so
-- settle (give back / retry) and reap (a crashed worker) return it to its windows.
-- KEYS: 1 grants (HASH id -> the counters it charged)
-- ARGV: 1 pacing key prefix (same hash tag as KEYS), 2 sender, 3 now_ms,
--   4 sender window mode ('fixed' | 'sliding' | 'none': no sender window; the daily limit
--   and the campaigns' caps hold in every mode), 5 window_ms, 6 sender window limit,
--   7 day_ms, 8 sender daily limit (0: none), 9 jitter fraction (0..1, for the next gap),
--   10 campaign count C, then C quintuples: campaign id, window limit (0: none),
--   daily limit (0: none), gap ms, jitter ms; then pairs: dispatch member, campaign id.
-- Returns {stop_reason, stop_until, code1, code2, ...}, one code per email, in order:
--   'g' granted (charged), 'r' not decided (a sender limit stopped the batch: give back),
--   'c:<due>' / 'd:<due>' held by its campaign's window / daily cap, to queue again at due.
local p = ARGV[1] .. ARGV[2] .. ':'
local now = tonumber(ARGV[3])
local mode = ARGV[4]
local window_ms, wlimit = tonumber(ARGV[5]), tonumber(ARGV[6])
local day_ms, dlimit = tonumber(ARGV[7]), tonumber(ARGV[8])
local u_next = ARGV[9]
local w, d = math.floor(now / window_ms), math.floor(now / day_ms)
local wkey, dkey = p .. 'w:' .. w, p .. 'd:' .. d
local skey, seqkey, gkey = p .. 'sl', p .. 'seq', p .. 'gap'

local camps = {}
local i = 11
for _ = 1, tonumber(ARGV[10]) do
  local c = {id = ARGV[i], wl = tonumber(ARGV[i + 1]), dl = tonumber(ARGV[i + 2]),
             gap = tonumber(ARGV[i + 3]), jit = tonumber(ARGV[i + 4])}
  c.wkey, c.dkey = p .. 'c:' .. c.id .. ':w:' .. w, p .. 'c:' .. c.id .. ':d:' .. d
  c.wused = c.wl > 0 and tonumber(redis.call('GET', c.wkey) or '0') or 0
  c.dused = c.dl > 0 and tonumber(redis.call('GET', c.dkey) or '0') or 0
  c.wadd, c.dadd = 0, 0
  camps[c.id] = c
  i = i + 5
end

local wused = 0
if mode == 'fixed' then
  wused = tonumber(redis.call('GET', wkey) or '0')
elseif mode == 'sliding' then
  redis.call('ZREMRANGEBYSCORE', skey, '-inf', now - window_ms)
  wused = redis.call('ZCARD', skey)
end
local dused = tonumber(redis.call('GET', dkey) or '0')
local last = redis.call('HMGET', gkey, 'last', 'u')
local last_ms, last_u = tonumber(last[1]), tonumber(last[2] or '0')

-- A campaign's held emails take the next free places of later windows (`cap` per window),
-- in order: each is re-queued once, for the window it can go in, not once every window.
-- Stored as "window:places taken" (exact integers, whatever the cap).
local slots = {}
local function next_slot(key, current, cap, span)
  local known = slots[key]
  if not known then
    local raw = redis.call('GET', key)
    known = {0, 0}
    if raw then
      local colon = string.find(raw, ':', 1, true)
      known = {tonumber(string.sub(raw, 1, colon - 1)), tonumber(string.sub(raw, colon + 1))}
    end
  end
  local win, taken = known[1], known[2]
  if win <= current then win, taken = current + 1, 0 end
  if taken >= cap then win, taken = win + 1, 0 end
  slots[key] = {win, taken + 1, span}
  return win
end

local out = {'', 0}
local stop, until_ms = nil, 0
local granted = {}
for j = i, #ARGV, 2 do
  local id, c = ARGV[j], camps[ARGV[j + 1]]
  local code = 'r'
  if not stop then
    if mode ~= 'none' and wused >= wlimit then
      stop = 'sender_window'
      if mode == 'fixed' then until_ms = (w + 1) * window_ms
      else
        local oldest = redis.call('ZRANGE', skey, 0, 0, 'WITHSCORES')
        until_ms = (oldest[2] and tonumber(oldest[2]) or now) + window_ms
      end
    elseif dlimit > 0 and dused >= dlimit then
      stop, until_ms = 'daily_limit', (d + 1) * day_ms
    elseif c.gap > 0 and last_ms and now < last_ms + c.gap + math.floor(last_u * c.jit) then
      stop, until_ms = 'min_gap', last_ms + c.gap + math.floor(last_u * c.jit)
    elseif c.wl > 0 and c.wused + c.wadd >= c.wl then
      -- a campaign cap holds back only its campaign: the next free slot of a later window
      code = 'c:' .. (next_slot(p .. 'c:' .. c.id .. ':next', w, c.wl, window_ms) * window_ms)
    elseif c.dl > 0 and c.dused + c.dadd >= c.dl then
      code = 'd:' .. (next_slot(p .. 'c:' .. c.id .. ':dnext', d, c.dl, day_ms) * day_ms)
    else
      code = 'g'
      granted[#granted + 1] = {id, c}
      wused, dused = wused + 1, dused + 1
      if c.wl > 0 then c.wadd = c.wadd + 1 end
      if c.dl > 0 then c.dadd = c.dadd + 1 end
      if c.gap > 0 then last_ms, last_u = now, tonumber(u_next) end
    end
  end
  out[#out + 1] = code
end
if stop then out[1], out[2] = stop, until_ms end

-- charge exactly what was granted, and remember it per dispatch for a refund
if #granted > 0 then
  local seq = 0
  if mode == 'sliding' then seq = redis.call('INCRBY', seqkey, #granted) - #granted end
  for n, g in ipairs(granted) do
    local rec = {}
    if mode == 'fixed' then rec[#rec + 1] = wkey
    elseif mode == 'sliding' then
      redis.call('ZADD', skey, now, seq + n)
      rec[#rec + 1] = skey .. '=' .. (seq + n)
    end
    rec[#rec + 1] = dkey
    local c = g[2]
    if c.wl > 0 then rec[#rec + 1] = c.wkey end
    if c.dl > 0 then rec[#rec + 1] = c.dkey end
    if #rec > 0 then redis.call('HSET', KEYS[1], g[1], table.concat(rec, ' ')) end
  end
  if mode == 'fixed' then
    redis.call('INCRBY', wkey, #granted)
    redis.call('PEXPIRE', wkey, window_ms * 2)
  elseif mode == 'sliding' then
    redis.call('PEXPIRE', skey, window_ms)
    -- outlives the log by far, so a sequence number is never reused while the log holds it
    redis.call('PEXPIRE', seqkey, math.max(window_ms, day_ms) * 2)
  end
  redis.call('INCRBY', dkey, #granted)  -- the day counts whatever the window mode
  redis.call('PEXPIRE', dkey, day_ms * 2)
  for _, c in pairs(camps) do
    if c.wadd > 0 then
      redis.call('INCRBY', c.wkey, c.wadd)
      redis.call('PEXPIRE', c.wkey, window_ms * 2)
    end
    if c.dadd > 0 then
      redis.call('INCRBY', c.dkey, c.dadd)
      redis.call('PEXPIRE', c.dkey, day_ms * 2)
    end
  end
  if last_ms == now then
    redis.call('HSET', gkey, 'last', now, 'u', u_next)
    redis.call('PEXPIRE', gkey, 86400000)
  end
end
for key, slot in pairs(slots) do
  -- kept until its last window has passed
  redis.call('SET', key, slot[1] .. ':' .. slot[2], 'PX', (slot[1] + 2) * slot[3] - now)
end
return out
