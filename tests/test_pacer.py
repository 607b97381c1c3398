"""One pacing decision per claimed batch: plugin policies first, in their order, then the
built-in limits (one Redis script) on what the plugins let through.

Against a real Redis, on an injected clock. The plugin policies here are small classes of
the documented protocols (`check`/`commit`, or the older `acquire`); the end-to-end proofs
with a worker are in test_pacing.py and test_pacing_exact.py.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, field
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from dispatch_engine.config import Settings
from dispatch_engine.limits import SenderLimits
from dispatch_engine.models import CampaignContent, CampaignStatus, DispatchJob, DispatchStatus
from dispatch_engine.models import Sender as SenderRow
from dispatch_engine.pacing import (
    BuiltinLimit,
    CampaignLimits,
    Pacer,
    PacingDecision,
    PacingEmail,
    PacingPolicySpec,
    PacingRequest,
    WaitReason,
    claim_cap,
    pacing_request,
)
from dispatch_engine.render import CompiledCampaign

HOUR = 3_600_000
T0 = 1_800_000_000_000 // HOUR * HOUR  # a window's start
DAY_MS = 86_400_000


def _request(ids: range, *, hourly: int = 100, gap: int = 0) -> PacingRequest:
    return PacingRequest(
        sender_id=7,
        hourly_limit=hourly,
        min_gap_ms=gap,
        count=len(ids),
        now_ms=T0,
        sender_hourly_limit=hourly,
        emails=tuple(PacingEmail(i, 1) for i in ids),
        campaigns=(CampaignLimits(1, gap_ms=gap),),
    )


@dataclass
class Allows:
    """A two-phase policy: allows `allowed`, and records what it was asked and charged."""

    allowed: int
    resume_at_ms: int | None = None
    reason: str = ""
    code: str = ""
    limited: bool = True
    asked: list[int] = field(default_factory=list)
    charged: list[int] = field(default_factory=list)

    async def check(self, request: PacingRequest) -> PacingDecision:
        self.asked.append(request.count)
        allowed = min(self.allowed, request.count)
        return PacingDecision(allowed, self.resume_at_ms, self.reason, self.limited, self.code)

    async def commit(self, request: PacingRequest, granted: int) -> None:
        self.charged.append(granted)


@dataclass
class OldStyle:
    """The older, one-phase protocol: only `acquire`."""

    allowed: int
    asked: list[int] = field(default_factory=list)

    async def acquire(self, request: PacingRequest) -> PacingDecision:
        self.asked.append(request.count)
        return PacingDecision(min(self.allowed, request.count), T0 + 5, "old style")


class HourlyWindow(BuiltinLimit):
    kind = "fixed_window"


class Gap(BuiltinLimit):
    kind = "min_gap"


async def test_without_limits_everything_the_policies_allow_is_granted_in_order() -> None:
    outcome = await Pacer([]).decide(_request(range(1, 6)))
    assert (outcome.granted, outcome.held, outcome.reason) == ([1, 2, 3, 4, 5], [], None)
    assert (outcome.resume_at_ms, outcome.detail, outcome.limited) == (None, "", False)


async def test_each_policy_is_asked_about_what_the_ones_before_it_allowed() -> None:
    first, second, third = Allows(4), Allows(2, reason="second says 2"), Allows(10)
    outcome = await Pacer([("first", first), ("second", second), ("third", third)]).decide(
        _request(range(1, 7))
    )
    assert (first.asked, second.asked, third.asked) == ([6], [4], [2])
    assert outcome.granted == [1, 2] and outcome.held == [3, 4, 5, 6]
    # Every policy that held some back is named, by its reason or else its name.
    assert outcome.detail == "first; second says 2"
    assert outcome.reason is WaitReason.POLICY and outcome.limited


async def test_a_policy_that_allows_nothing_ends_the_asking() -> None:
    closed, after = Allows(0, resume_at_ms=T0 + 60_000, code="business_hours"), Allows(10)
    outcome = await Pacer([("closed", closed), ("after", after)]).decide(_request(range(1, 4)))
    assert after.asked == [] and outcome.granted == [] and outcome.held == [1, 2, 3]
    assert outcome.reason is WaitReason.BUSINESS_HOURS
    assert outcome.resume_at_ms == T0 + 60_000
    assert closed.charged == [0] and after.charged == [0]


async def test_a_negative_allowance_is_nothing_allowed() -> None:
    outcome = await Pacer([("odd", Allows(-3))]).decide(_request(range(1, 4)))
    assert outcome.granted == [] and outcome.held == [1, 2, 3]


async def test_the_first_reason_wins_and_the_latest_resume_time() -> None:
    early = Allows(3, resume_at_ms=T0 + 1_000, code="business_hours")
    late = Allows(1, resume_at_ms=T0 + 9_000, code="not-a-known-code")
    outcome = await Pacer([("early", early), ("late", late)]).decide(_request(range(1, 6)))
    assert outcome.reason is WaitReason.BUSINESS_HOURS
    assert outcome.resume_at_ms == T0 + 9_000
    only_late = await Pacer([("late", Allows(1, code="not-a-known-code"))]).decide(
        _request(range(1, 3))
    )
    assert only_late.reason is WaitReason.POLICY and only_late.resume_at_ms is None


async def test_a_pace_that_holds_some_back_is_not_a_limit() -> None:
    """`limited=False` (spacing emails out) shows no `rate_limited` and fires no hook."""
    outcome = await Pacer([("pace", Allows(1, limited=False))]).decide(_request(range(1, 3)))
    assert outcome.held == [2] and not outcome.limited
    also = await Pacer([("pace", Allows(1, limited=False)), ("limit", Allows(0))]).decide(
        _request(range(1, 3))
    )
    assert also.limited


async def test_an_older_policy_is_asked_through_acquire() -> None:
    old = OldStyle(2)
    outcome = await Pacer([("old", old)]).decide(_request(range(1, 5)))
    assert old.asked == [4] and outcome.granted == [1, 2] and outcome.held == [3, 4]
    assert outcome.detail == "old style" and outcome.resume_at_ms == T0 + 5
    assert outcome.limited, "a decision that does not say otherwise is a limit"


async def test_the_built_in_limits_see_only_what_the_policies_let_through(
    redis: Redis, settings: Settings
) -> None:
    """The sender's window counts the 3 the plugin allowed, not the 6 claimed; the plugin
    is charged what the built-in limits finally granted."""
    policy = Allows(3)
    pacer = Pacer([("plugin", policy)], SenderLimits(redis, settings))
    outcome = await pacer.decide(_request(range(1, 7), hourly=2))
    assert outcome.granted == [1, 2] and outcome.held == [3, 4, 5, 6]
    assert policy.charged == [2]
    assert outcome.reason is WaitReason.POLICY  # the plugin held back first
    assert outcome.detail == "plugin; hourly limit 2 reached" and outcome.limited
    assert outcome.resume_at_ms == T0 + settings.rate_window_seconds * 1000
    assert await pacer.usage(7, T0) == 2 and await pacer.today(7, T0) == 2


async def test_a_built_in_limit_alone_gives_its_own_reason_and_resume(
    redis: Redis, settings: Settings
) -> None:
    pacer = Pacer([], SenderLimits(redis, settings))
    outcome = await pacer.decide(_request(range(1, 5), hourly=3))
    assert outcome.granted == [1, 2, 3] and outcome.held == [4]
    assert outcome.reason is WaitReason.SENDER_WINDOW and outcome.limited
    assert outcome.resume_at_ms == T0 + settings.rate_window_seconds * 1000
    gap = await pacer.decide(_request(range(10, 13), gap=1000))
    assert gap.reason is WaitReason.MIN_GAP and not gap.limited


async def test_built_in_policies_listed_in_dispatch_pacing_decide_together(
    redis: Redis, settings: Settings
) -> None:
    """DISPATCH_PACING=fixed_window,min_gap: the Pacer folds them into one SenderLimits."""
    pacer = Pacer(
        [("fixed_window", HourlyWindow(redis, settings)), ("min_gap", Gap(redis, settings))]
    )
    assert pacer.policies == [] and pacer.limits is not None
    outcome = await pacer.decide(_request(range(1, 4), gap=1000))
    assert outcome.granted == [1] and outcome.reason is WaitReason.MIN_GAP
    assert await pacer.usage(7, T0) == 1
    with pytest.raises(NotImplementedError, match="fixed_window decides together"):
        await HourlyWindow(redis, settings).acquire(_request(range(1, 2)))


async def test_without_built_in_limits_there_is_no_usage_to_show() -> None:
    pacer = Pacer([("plugin", Allows(1))])
    assert await pacer.usage(7, T0) is None and await pacer.today(7, T0) is None


def test_a_claim_takes_one_id_of_a_gap_paced_sender_and_a_window_of_the_others() -> None:
    assert claim_cap(50, 1) == 1
    assert claim_cap(50, 0) == 50


def _sender(**changes: int | None) -> SenderRow:
    values: dict[str, int | None] = {"hourly_limit": 100, "min_gap_ms": 200, "daily_limit": 900,
                                     "delay_jitter_ms": 5, **changes}  # fmt: skip
    return SenderRow(id=7, owner_id=1, from_address="a@example.com", display_name="",
                     reply_to=None, transport="capture", transport_settings={},
                     **values)  # type: ignore[arg-type]  # fmt: skip


def _campaign(cid: int, **limits: int | None) -> CampaignContent:
    return CampaignContent(id=cid, owner_id=1, sender_id=7, subject="s", body_text="b",
                           body_html=None, delay_between_ms=limits.pop("delay", 0) or 0,
                           hourly_limit=limits.pop("hourly", None), **limits)  # type: ignore[arg-type]  # fmt: skip


def _job(dispatch_id: int, campaign_id: int) -> DispatchJob:
    return DispatchJob(dispatch_id, campaign_id, 7, 1, f"r{dispatch_id}@example.com", {},
                       DispatchStatus.SCHEDULED, CampaignStatus.RUNNING, b"k", 0,
                       datetime.now(UTC))  # fmt: skip


def test_a_batch_of_several_campaigns_asks_for_the_strictest_of_their_limits() -> None:
    sender = _sender()
    compiled = {
        1: CompiledCampaign(_campaign(1, hourly=40, delay=50, delay_jitter_ms=9), sender),
        2: CompiledCampaign(_campaign(2, delay=700, daily_limit=30), sender),
        3: CompiledCampaign(_campaign(3, hourly=60), sender),
    }
    jobs = [_job(10, 2), _job(11, 1), _job(12, 2), _job(13, 3)]
    request = pacing_request(7, jobs, compiled, T0, DAY_MS)
    assert (request.sender_id, request.count, request.now_ms) == (7, 4, T0)
    assert request.hourly_limit == 40 and request.sender_hourly_limit == 100
    assert request.min_gap_ms == 700 and request.daily_limit == 900
    assert request.emails == tuple(PacingEmail(j.id, j.campaign_id) for j in jobs)
    assert request.campaigns == (
        CampaignLimits(2, None, 30, 700, 5),
        CampaignLimits(1, 40, None, 200, 9),
        CampaignLimits(3, 60, None, 200, 5),
    )


def test_a_campaign_without_its_own_limits_asks_for_the_senders() -> None:
    sender = _sender(hourly_limit=30, min_gap_ms=0, daily_limit=None, delay_jitter_ms=0)
    request = pacing_request(
        7, [_job(1, 1)], {1: CompiledCampaign(_campaign(1), sender)}, T0, DAY_MS
    )
    assert (request.hourly_limit, request.min_gap_ms, request.daily_limit) == (30, 0, None)


def test_what_a_policy_is_given_and_answers_cannot_be_changed() -> None:
    """The same request goes on to the next policy and the built-in limits: frozen values."""
    values: list[object] = [
        _request(range(1, 2)),
        PacingEmail(1, 1),
        CampaignLimits(1),
        PacingDecision(1),
        PacingPolicySpec("p", HourlyWindow),
    ]
    for value in values:
        with pytest.raises(FrozenInstanceError):
            value.campaign_id = 2  # type: ignore[attr-defined]
