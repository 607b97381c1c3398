"""The built-in limits of a sender, decided together in one atomic script (`lua/pace.lua`).

- the sender's window: a fixed clock window (`fixed_window`) or any window ending now
  (`sliding_window`) of DISPATCH_RATE_WINDOW_SECONDS, at most its hourly limit;
- the sender's daily limit, per day of DISPATCH_DAY_SECONDS (clock days, UTC);
- the minimum gap (`min_gap`): max(sender's min_gap_ms, campaign's delay_between_ms), plus a
  random part in [0, delay_jitter_ms];
- each campaign's own hourly and daily caps (fixed windows), which hold back only it.

Only what every limit grants is charged, and each grant is recorded under its dispatch id
in the queue shard's `grants` hash: a give-back, a retry or a reaped lease (a worker that
died before sending) returns it to its windows (`lua/refund.lua`). The pacing keys live in
the sender's queue shard (`dispatch:{qN}:p:<sender>:…`), so one script sees them all, in a
Redis Cluster too. Every time is computed from the request's `now_ms`: tests inject it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from importlib import resources

from redis.asyncio import Redis

from .config import Settings
from .pacing import BuiltinLimit, PacingOutcome, PacingRequest, WaitReason
from .queue import dispatch_id_of, member, shard_for

_REASONS = {
    "sender_window": WaitReason.SENDER_WINDOW,
    "daily_limit": WaitReason.DAILY_LIMIT,
    "min_gap": WaitReason.MIN_GAP,
}


class SenderLimits:
    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        *,
        window: str = "fixed",  # "fixed" | "sliding" | "none"
        gap: bool = True,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.redis = redis
        self.window = window
        self.gap = gap
        self.shards = settings.queue_shards
        self.window_ms = settings.rate_window_seconds * 1000
        self.day_ms = settings.day_seconds * 1000
        self.rng = rng
        lua = resources.files("dispatch_engine").joinpath("lua", "pace.lua").read_text()
        self._script = redis.register_script(lua)

    @classmethod
    def from_policies(cls, policies: Sequence[BuiltinLimit]) -> SenderLimits:
        kinds = [p.kind for p in policies]
        window = next((k for k in kinds if k in ("fixed_window", "sliding_window")), None)
        first = policies[0]
        return cls(
            first.redis,
            first.settings,
            window={"fixed_window": "fixed", "sliding_window": "sliding", None: "none"}[window],
            gap="min_gap" in kinds,
        )

    def _prefix(self, sender_id: int) -> str:
        return f"{shard_for(sender_id, self.shards).pacing_prefix}{sender_id}:"

    async def decide(self, request: PacingRequest) -> PacingOutcome:
        keys = shard_for(request.sender_id, self.shards)
        camps: list[str | int] = []
        for c in request.campaigns:
            gap, jitter = (c.gap_ms, c.jitter_ms) if self.gap else (0, 0)
            camps += (c.campaign_id, c.hourly_limit or 0, c.daily_limit or 0, gap, jitter)
        emails: list[str | int] = []
        for e in request.emails:
            emails += (member(e.dispatch_id), e.campaign_id)
        raw = await self._script(
            keys=[keys.key("grants")],
            args=[
                keys.pacing_prefix,
                request.sender_id,
                request.now_ms,
                self.window,
                self.window_ms,
                request.sender_hourly_limit or request.hourly_limit,
                self.day_ms,
                request.daily_limit or 0,
                repr(self.rng()),
                len(request.campaigns),
                *camps,
                *emails,
            ],
        )
        stop = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        out = PacingOutcome()
        for e, code in zip(request.emails, raw[2:], strict=True):
            text = code.decode() if isinstance(code, bytes) else str(code)
            if text == "g":
                out.granted.append(e.dispatch_id)
            elif text == "r":
                out.held.append(e.dispatch_id)
            else:
                why = WaitReason.CAMPAIGN_CAP if text[0] == "c" else WaitReason.DAILY_LIMIT
                out.deferred.append((e.dispatch_id, int(text[2:]), why))
        if stop:
            out.reason = _REASONS[stop]
            out.resume_at_ms = int(raw[1])
            out.limited = out.reason is not WaitReason.MIN_GAP
            out.detail = {
                "sender_window": (
                    f"hourly limit {request.sender_hourly_limit or request.hourly_limit} reached"
                ),
                "daily_limit": f"daily limit {request.daily_limit} reached",
                "min_gap": "gap between emails",
            }[stop]
        return out

    async def window_usage(self, sender_id: int, now_ms: int) -> int | None:
        prefix = self._prefix(sender_id)
        if self.window == "fixed":
            return int(await self.redis.get(f"{prefix}w:{now_ms // self.window_ms}") or 0)
        if self.window == "sliding":
            return int(await self.redis.zcount(f"{prefix}sl", now_ms - self.window_ms + 1, "+inf"))
        return None

    async def day_usage(self, sender_id: int, now_ms: int) -> int | None:
        return int(await self.redis.get(f"{self._prefix(sender_id)}d:{now_ms // self.day_ms}") or 0)

    async def granted_ids(self, sender_id: int) -> list[int]:
        """Dispatch ids of a shard whose grants are charged and not yet settled (tests)."""
        keys = shard_for(sender_id, self.shards)
        return [dispatch_id_of(k) for k in await self.redis.hkeys(keys.key("grants"))]
