"""The face of pacing: every policy of a sender decides together, once per claimed batch.

Plugin policies are asked first (their `check`, or their `acquire` for the older protocol);
what they allow then goes to the built-in limits (`limits.py`: sender window, daily limit,
minimum gap and campaign caps), which decide in ONE Redis script and charge only what they
grant. A grant not sent is returned to its windows (see `lua/refund.lua`). What a sender
limit refuses is given back in order and the sender is parked; what a campaign cap refuses
is queued again for the window it fits in, so the sender's other campaigns go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from redis.asyncio import Redis

from .config import Settings
from .pools.compiled import for_job
from .warmup import daily_limit_now

if TYPE_CHECKING:
    from .limits import SenderLimits
    from .models import DispatchJob
    from .render import CompiledCampaign


class WaitReason(StrEnum):
    """Why a queued email is not sent yet (the API and the campaign page show it)."""

    SCHEDULED = "scheduled"  # its time has not come
    SENDER_WINDOW = "sender_window"  # the sender's hourly limit (its window is full)
    CAMPAIGN_CAP = "campaign_cap"  # the campaign's own hourly limit
    DAILY_LIMIT = "daily_limit"  # the sender's or the campaign's daily limit
    MIN_GAP = "min_gap"  # the delay between two emails of the sender
    BUSINESS_HOURS = "business_hours"
    RECIPIENT_HOURS = "recipient_hours"  # outside the campaign's window in the recipient's zone
    POLICY = "policy"  # another pacing plugin
    PAUSED = "paused"  # the campaign is paused
    AUTH_FAILURE = "auth_failure"  # the sender's account refused the login


@dataclass(frozen=True)
class PacingEmail:
    dispatch_id: int
    campaign_id: int


@dataclass(frozen=True)
class CampaignLimits:
    """A campaign's own limits, and the gap its emails need (sender's and campaign's)."""

    campaign_id: int
    hourly_limit: int | None = None
    daily_limit: int | None = None
    gap_ms: int = 0  # max(sender's min_gap_ms, campaign's delay_between_ms)
    jitter_ms: int = 0  # a random extra gap in [0, jitter_ms]


@dataclass(frozen=True)
class PacingRequest:
    sender_id: int
    hourly_limit: int  # the effective limit: min(sender's, its campaigns')
    min_gap_ms: int  # the effective gap: max(sender's, campaigns' delay_between)
    count: int  # how many emails the worker holds for this sender
    now_ms: int  # the clock pacing computes with (Redis' clock, from the claim)
    daily_limit: int | None = None  # the sender's own
    sender_hourly_limit: int | None = None  # the sender's own (None: hourly_limit)
    emails: tuple[PacingEmail, ...] = ()  # the `count` emails, in queue order
    campaigns: tuple[CampaignLimits, ...] = ()


@dataclass(frozen=True)
class PacingDecision:
    allowed: int
    resume_at_ms: int | None = None  # when the sender may send again, if allowed < count
    reason: str = ""
    # A limit (hourly, business hours) holds emails back: they show `rate_limited` and
    # `sender_limited` fires. A pace (the gap between two emails) only spaces them out.
    limited: bool = True
    code: str = ""  # a WaitReason value; empty: `policy`


class PacingPolicy(Protocol):
    """The older, one-phase protocol: `acquire` decides and charges at once.

    Still supported. A policy that keeps counts should rather offer `check` (decide without
    charging) and `commit(request, granted)` (charge what was finally granted): a policy
    that charges in `acquire` is charged for emails the built-in limits then refuse.
    """

    async def acquire(self, request: PacingRequest) -> PacingDecision: ...


@dataclass(frozen=True)
class PacingPolicySpec:
    name: str
    factory: Callable[[Redis, Settings], object]
    description: str = ""


class BuiltinLimit:
    """A built-in policy: the Pacer folds all of them into one script call (`limits.py`)."""

    kind: str = ""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings

    async def acquire(self, request: PacingRequest) -> PacingDecision:
        raise NotImplementedError(
            f"{self.kind} decides together with the other built-in limits, through Pacer"
        )


def claim_cap(sender_limit: int, gap_ms: int) -> int:
    """Most ids of one sender a claim should take: no more than its pace can use at once.

    A gap-paced sender sends one at a time; a limited sender at most its limit per window.
    A campaign's cap does not lower it: the sender's other campaigns may still send.
    """
    if gap_ms > 0:
        return 1
    return sender_limit


@dataclass
class PacingOutcome:
    """What one decision lets go now, queues again later, and gives back."""

    granted: list[int] = field(default_factory=list)  # dispatch ids, in order
    # (id, due ms, reason): held by their campaign's cap; queued again for that time
    deferred: list[tuple[int, int, WaitReason]] = field(default_factory=list)
    held: list[int] = field(default_factory=list)  # given back in order; the sender parks
    resume_at_ms: int | None = None
    reason: WaitReason | None = None  # why the sender parks
    detail: str = ""
    limited: bool = False


class Pacer:
    """Plugin policies first (in their order), then the built-in limits in one script."""

    def __init__(
        self, policies: Sequence[tuple[str, object]], limits: SenderLimits | None = None
    ) -> None:
        self.policies = [(n, p) for n, p in policies if not isinstance(p, BuiltinLimit)]
        builtins = [p for _, p in policies if isinstance(p, BuiltinLimit)]
        if limits is None and builtins:
            from .limits import SenderLimits

            limits = SenderLimits.from_policies(builtins)
        self.limits = limits

    async def decide(self, request: PacingRequest) -> PacingOutcome:
        emails = list(request.emails)
        allowed, resume = len(emails), None
        reasons: list[str] = []
        code: WaitReason | None = None
        limited = False
        for name, policy in self.policies:
            if allowed == 0:
                break
            ask = getattr(policy, "check", None) or policy.acquire  # type: ignore[attr-defined]
            decision: PacingDecision = await ask(replace(request, count=allowed))
            if decision.allowed < allowed:
                allowed = max(0, decision.allowed)
                reasons.append(decision.reason or name)
                limited |= decision.limited
                code = code or _reason(decision.code)
                if decision.resume_at_ms is not None:
                    resume = max(resume or 0, decision.resume_at_ms)
        asked = replace(request, count=allowed, emails=tuple(emails[:allowed]))
        outcome = (
            await self.limits.decide(asked)
            if self.limits is not None and allowed
            else PacingOutcome(granted=[e.dispatch_id for e in emails[:allowed]])
        )
        for _, policy in self.policies:
            commit = getattr(policy, "commit", None)
            if commit is not None:
                await commit(asked, len(outcome.granted))
        outcome.held += [e.dispatch_id for e in emails[allowed:]]
        if outcome.reason is not None:
            reasons.append(outcome.detail)
            code = code or outcome.reason
            limited |= outcome.limited
            if outcome.resume_at_ms is not None:
                resume = max(resume or 0, outcome.resume_at_ms)
        outcome.resume_at_ms, outcome.reason = resume, code
        outcome.detail, outcome.limited = "; ".join(reasons), limited
        return outcome

    async def usage(self, sender_id: int, now_ms: int) -> int | None:
        """Sent in the sender's current window (for /api/stats); None without a window."""
        return await self.limits.window_usage(sender_id, now_ms) if self.limits else None

    async def today(self, sender_id: int, now_ms: int) -> int | None:
        """Sent in the sender's current day (DISPATCH_DAY_SECONDS)."""
        return await self.limits.day_usage(sender_id, now_ms) if self.limits else None


def pacing_request(
    sender_id: int,
    group: Sequence[DispatchJob],
    compiled: dict[int, CompiledCampaign],
    now_ms: int,
    day_ms: int,
) -> PacingRequest:
    """The request for one sender's claimed emails (in queue order), with its campaigns."""
    sender = for_job(compiled, group[0]).sender  # a pool's own
    campaigns = {}
    for job in group:
        c = compiled[job.campaign_id].campaign
        campaigns[c.id] = CampaignLimits(
            c.id,
            c.hourly_limit,
            c.daily_limit,
            max(sender.min_gap_ms, c.delay_between_ms),
            max(sender.delay_jitter_ms, c.delay_jitter_ms),
        )
    limits = [c.hourly_limit for c in campaigns.values() if c.hourly_limit]
    return PacingRequest(
        sender_id,
        min([sender.hourly_limit, *limits]),
        max(c.gap_ms for c in campaigns.values()),
        len(group),
        now_ms,
        daily_limit=daily_limit_now(sender, now_ms, day_ms),  # its own, or its warm-up's
        sender_hourly_limit=sender.hourly_limit,
        emails=tuple(PacingEmail(j.id, j.campaign_id) for j in group),
        campaigns=tuple(campaigns.values()),
    )


def _reason(code: str) -> WaitReason:
    try:
        return WaitReason(code)
    except ValueError:
        return WaitReason.POLICY
