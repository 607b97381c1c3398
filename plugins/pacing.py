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
        self.window_ms = settings.rate_window_seconds * 1000
        self._script = redis.register_script(_WINDOW)

    async def acquire(self, request: PacingRequest) -> PacingDecision:
        window = request.now_ms // self.window_ms
        key = f"dispatch:rate:{{{request.sender_id}}}:{window}"
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
            return PacingDecision(0, blocked_until, f"{request.min_gap_ms} ms gap between emails")
        return PacingDecision(
            min(1, request.count),
            request.now_ms + request.min_gap_ms,
            f"{request.min_gap_ms} ms gap between emails",
        )


@hookimpl(trylast=True)
def register_pacing_policies(settings: Settings) -> list[Any]:
    return [
        PacingPolicySpec("fixed_window", FixedWindow, "hourly limit per clock window"),
        PacingPolicySpec("min_gap", MinimumGap, "minimum gap between two emails of a sender"),
    ]
