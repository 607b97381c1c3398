"""The face of pacing: policies (plugins) decide how many of a sender's emails may go now.

The worker asks every configured policy; the smallest allowance wins and the latest resume
time parks the sender (its backlog stays in order in Redis; nothing is rescheduled).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from redis.asyncio import Redis

from .config import Settings


@dataclass(frozen=True)
class PacingRequest:
    sender_id: int
    hourly_limit: int  # the effective limit: min(sender's, campaign's)
    min_gap_ms: int  # the effective gap: max(sender's, campaign's delay_between)
    count: int  # how many emails the worker holds for this sender
    now_ms: int  # Redis' clock, from the claim


@dataclass(frozen=True)
class PacingDecision:
    allowed: int
    resume_at_ms: int | None = None  # when the sender may send again, if allowed < count
    reason: str = ""
    # A limit (hourly, business hours) holds emails back: they show `rate_limited` and
    # `sender_limited` fires. A pace (the gap between two emails) only spaces them out.
    limited: bool = True


class PacingPolicy(Protocol):
    async def acquire(self, request: PacingRequest) -> PacingDecision: ...


class CountingPolicy(PacingPolicy, Protocol):
    """A policy that can also say how many emails a sender sent in its current window."""

    async def usage(self, sender_id: int, now_ms: int) -> int: ...


@dataclass(frozen=True)
class PacingPolicySpec:
    name: str
    factory: Callable[[Redis, Settings], PacingPolicy]
    description: str = ""


def claim_cap(sender_limit: int, campaign_limit: int | None, gap_ms: int) -> int:
    """Most ids of one sender a claim should take: no more than its pace can use at once.

    A gap-paced sender sends one at a time; a limited sender at most its limit per window.
    Claiming more would only give the rest back every window (work growing with the batch).
    """
    if gap_ms > 0:
        return 1
    return min(sender_limit, campaign_limit or sender_limit)


class Pacer:
    """Runs the configured policies in order; stops asking once one allows nothing."""

    def __init__(self, policies: Sequence[tuple[str, PacingPolicy]]) -> None:
        self.policies = list(policies)

    async def acquire(self, request: PacingRequest) -> PacingDecision:
        allowed = request.count
        resume: int | None = None
        reasons = []
        limited = False
        for name, policy in self.policies:
            if allowed == 0:
                break
            decision = await policy.acquire(replace(request, count=allowed))
            if decision.allowed < allowed:
                allowed = decision.allowed
                reasons.append(decision.reason or name)
                limited |= decision.limited
                if decision.resume_at_ms is not None:
                    resume = max(resume or 0, decision.resume_at_ms)
        return PacingDecision(allowed, resume, "; ".join(reasons), limited)

    async def usage(self, sender_id: int, now_ms: int) -> int | None:
        """Sent in the current window, from the first policy that counts (for /api/stats)."""
        for _, policy in self.policies:
            usage = getattr(policy, "usage", None)
            if usage is not None:
                return int(await usage(sender_id, now_ms))
        return None
