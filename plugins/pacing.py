"""Built-in pacing policies: a fixed clock window per sender and a minimum gap between emails.

Policy state lives in Redis so every worker process shares it; each check is one atomic
script call per sender per claimed batch, whatever the batch size.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from dispatch_engine import hookimpl
from dispatch_engine.config import Settings
from dispatch_engine.pacing import PacingDecision, PacingPolicySpec, PacingRequest

_WINDOW = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local allowed = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if allowed <= 0 then return {0, used} end
redis.call('INCRBY', KEYS[1], allowed)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {allowed, used + allowed}
"""

# A log of send times per sender (ZSET): exact, and it says when the oldest send leaves.
_SLIDING = """
local now, window, limit, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
    tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
local allowed = math.min(count, limit - used)
if allowed > 0 then
  local seq = redis.call('INCRBY', KEYS[2], allowed)
  for i = 1, allowed do redis.call('ZADD', KEYS[1], now, seq - allowed + i) end
  redis.call('PEXPIRE', KEYS[1], window)
  redis.call('PEXPIRE', KEYS[2], window)
else
  allowed = 0
end
if allowed >= count then return {allowed, 0} end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {allowed, tonumber(oldest[2]) + window}
"""

_GAP = """
local last = redis.call('GET', KEYS[1])
local now, gap = tonumber(ARGV[1]), tonumber(ARGV[2])
if last and now < tonumber(last) + gap then return tonumber(last) + gap end
redis.call('SET', KEYS[1], now, 'PX', gap * 2)
return 0
"""


class FixedWindow:
    """At most `hourly_limit` emails per sender per window (`DISPATCH_RATE_WINDOW_SECONDS`)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.window_ms = settings.rate_window_seconds * 1000
        self._script = redis.register_script(_WINDOW)

    def _key(self, sender_id: int, now_ms: int) -> str:
        return f"dispatch:rate:{{{sender_id}}}:{now_ms // self.window_ms}"

    async def usage(self, sender_id: int, now_ms: int) -> int:
        return int(await self.redis.get(self._key(sender_id, now_ms)) or 0)

    async def acquire(self, request: PacingRequest) -> PacingDecision:
        window = request.now_ms // self.window_ms
        key = self._key(request.sender_id, request.now_ms)
        allowed, _used = await self._script(
            keys=[key], args=[request.count, request.hourly_limit, self.window_ms * 2]
        )
        if int(allowed) >= request.count:
            return PacingDecision(request.count)
        return PacingDecision(
            int(allowed),
            (window + 1) * self.window_ms,
            f"hourly limit {request.hourly_limit} reached",
        )


class SlidingWindow:
    """At most `hourly_limit` emails in any window of `DISPATCH_RATE_WINDOW_SECONDS`.

    Smoother than the clock window (no burst of twice the limit around a boundary); it keeps
    one timestamp per send of the last window in Redis.
    """

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.window_ms = settings.rate_window_seconds * 1000
        self._script = redis.register_script(_SLIDING)

    async def usage(self, sender_id: int, now_ms: int) -> int:
        key = f"dispatch:sliding:{{{sender_id}}}"
        return int(await self.redis.zcount(key, now_ms - self.window_ms + 1, "+inf"))

    async def acquire(self, request: PacingRequest) -> PacingDecision:
        tag = f"{{{request.sender_id}}}"
        allowed, resume = await self._script(
            keys=[f"dispatch:sliding:{tag}", f"dispatch:sliding-seq:{tag}"],
            args=[request.now_ms, self.window_ms, request.hourly_limit, request.count],
        )
        if int(allowed) >= request.count:
            return PacingDecision(request.count)
        return PacingDecision(
            int(allowed), int(resume), f"hourly limit {request.hourly_limit} reached"
        )


class MinimumGap:
    """At least `min_gap_ms` between two emails of one sender, across all workers."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._script = redis.register_script(_GAP)

    async def acquire(self, request: PacingRequest) -> PacingDecision:
        if request.min_gap_ms <= 0:
            return PacingDecision(request.count)
        key = f"dispatch:gap:{{{request.sender_id}}}"
        args = [request.now_ms, request.min_gap_ms]
        blocked_until = int(await self._script(keys=[key], args=args))
        if blocked_until:
            reason = f"{request.min_gap_ms} ms gap between emails"
            return PacingDecision(0, blocked_until, reason, limited=False)
        return PacingDecision(
            min(1, request.count),
            request.now_ms + request.min_gap_ms,
            f"{request.min_gap_ms} ms gap between emails",
            limited=False,
        )


@hookimpl(trylast=True)
def register_pacing_policies(settings: Settings) -> list[Any]:
    return [
        PacingPolicySpec("fixed_window", FixedWindow, "hourly limit per clock window"),
        PacingPolicySpec("sliding_window", SlidingWindow, "hourly limit over any window"),
        PacingPolicySpec("min_gap", MinimumGap, "minimum gap between two emails of a sender"),
    ]
