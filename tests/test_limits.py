"""The built-in limits' one script, against a real Redis, on an injected clock (no sleeping).

Days and windows are simulated by handing `SenderLimits` the time (`now_ms`), as DESIGN.md
asks of pacing; the end-to-end proofs are in test_pacing_exact.py.
"""

from __future__ import annotations

from dataclasses import replace

from redis.asyncio import Redis

from dispatch_engine.config import Settings
from dispatch_engine.limits import SenderLimits
from dispatch_engine.pacing import CampaignLimits, PacingEmail, PacingRequest, WaitReason
from dispatch_engine.queue import RedisQueue

HOUR, DAY = 3_600_000, 86_400_000
T0 = 1_800_000_000_000 // DAY * DAY  # a day's start


def _request(
    now: int, emails: list[tuple[int, int]], *camps: CampaignLimits, **kw: int
) -> PacingRequest:
    limit = kw.pop("hourly", 10)
    return PacingRequest(
        sender_id=7,
        hourly_limit=limit,
        min_gap_ms=0,
        count=len(emails),
        now_ms=now,
        sender_hourly_limit=limit,
        emails=tuple(PacingEmail(i, c) for i, c in emails),
        campaigns=camps or (CampaignLimits(1),),
        **kw,
    )


async def test_a_daily_limit_spans_the_windows_of_a_day(redis: Redis, settings: Settings) -> None:
    limits = SenderLimits(redis, settings)
    sent = []
    for hour in range(30):  # thirty hourly windows from a day's start, 10 emails asked each
        now = T0 + hour * HOUR
        outcome = await limits.decide(
            _request(now, [(hour * 100 + n, 1) for n in range(10)], hourly=4, daily_limit=30)
        )
        sent.append(len(outcome.granted))
        if len(outcome.granted) < 10:
            assert outcome.reason in (WaitReason.SENDER_WINDOW, WaitReason.DAILY_LIMIT)
        if outcome.reason is WaitReason.DAILY_LIMIT:
            assert outcome.resume_at_ms == T0 + DAY
    # 4 per hour until the day's 30 are out (7 windows and 2), nothing until the next day.
    assert sent[:9] == [4] * 7 + [2, 0] and sum(sent[:24]) == 30 and sent[24:] == [4] * 6


async def test_the_gap_grants_one_and_charges_one(redis: Redis, settings: Settings) -> None:
    limits = SenderLimits(redis, settings, rng=lambda: 0.5)
    camp = CampaignLimits(1, gap_ms=1000, jitter_ms=400)
    first = await limits.decide(_request(T0, [(i, 1) for i in range(10)], camp))
    assert first.granted == [0] and first.held == list(range(1, 10))
    assert await limits.window_usage(7, T0) == 1  # not 10: only the grant is charged
    early = await limits.decide(_request(T0 + 1100, [(1, 1)], camp))
    # the random part drawn at the last grant (0.5 x 400 ms) is added to the 1 s gap
    assert early.granted == [] and early.reason is WaitReason.MIN_GAP
    assert early.resume_at_ms == T0 + 1200
    assert (await limits.decide(_request(T0 + 1200, [(1, 1)], camp))).granted == [1]


async def test_a_campaign_cap_defers_its_emails_to_the_windows_they_fit(
    redis: Redis, settings: Settings
) -> None:
    limits = SenderLimits(redis, settings)
    capped, free = CampaignLimits(1, hourly_limit=3), CampaignLimits(2)
    emails = [(i, 1) for i in range(10)] + [(100 + i, 2) for i in range(5)]
    outcome = await limits.decide(_request(T0, emails, capped, free, hourly=1000))
    assert outcome.granted == [0, 1, 2, 100, 101, 102, 103, 104]
    assert outcome.reason is None and outcome.held == []
    # 3 per window, in order: each held email is queued once, for the window it can go in
    dues = [due for _, due, _ in outcome.deferred]
    assert dues == [T0 + HOUR] * 3 + [T0 + 2 * HOUR] * 3 + [T0 + 3 * HOUR]
    more = await limits.decide(_request(T0 + 10, [(50, 1)], capped, free, hourly=1000))
    assert more.deferred == [(50, T0 + 3 * HOUR, WaitReason.CAMPAIGN_CAP)]


async def test_a_reaped_grant_returns_to_its_window(redis: Redis, settings: Settings) -> None:
    queue = RedisQueue(redis, lease_ms=1)
    limits = SenderLimits(redis, replace(settings, rate_window_seconds=3600))
    seconds, _ = await redis.time()
    now = int(seconds) * 1000
    await queue.enqueue(7, [(i, now - 10) for i in range(5)])
    claim = await queue.claim(10)
    assert len(claim.leases) == 5
    outcome = await limits.decide(_request(claim.now_ms, [(i, 1) for i in range(5)], hourly=5))
    assert len(outcome.granted) == 5 and await limits.window_usage(7, claim.now_ms) == 5
    # the worker dies here: no send, no settle; its leases expire and are reaped
    reaped = 0
    while reaped < 5:
        reaped += (await queue.reap())[0]
    assert await limits.window_usage(7, claim.now_ms) == 0
    again = await queue.claim(10)
    outcome = await limits.decide(_request(again.now_ms, [(i, 1) for i in range(5)], hourly=5))
    assert len(outcome.granted) == 5
    await queue.ack(again.leases)  # sent: the grants stay charged
    assert await limits.window_usage(7, again.now_ms) == 5
    assert await limits.granted_ids(7) == []


async def test_a_granted_email_dropped_unsent_returns_its_grant(
    redis: Redis, settings: Settings
) -> None:
    """Granted, then its campaign is cancelled or paused before the send begins: the worker
    drops the lease and the window gets the budget back; an ack (sent) keeps it."""
    queue = RedisQueue(redis)
    limits = SenderLimits(redis, replace(settings, rate_window_seconds=3600))
    seconds, _ = await redis.time()
    await queue.enqueue(7, [(i, int(seconds) * 1000 - 10) for i in range(4)])
    claim = await queue.claim(10)
    outcome = await limits.decide(_request(claim.now_ms, [(i, 1) for i in range(4)], hourly=4))
    assert len(outcome.granted) == 4 and await limits.window_usage(7, claim.now_ms) == 4
    await queue.drop(claim.leases[:3])
    await queue.ack(claim.leases[3:])
    assert await limits.window_usage(7, claim.now_ms) == 1
    assert await limits.granted_ids(7) == [] and await queue.depth(7) == 0


async def test_without_a_sender_window_the_daily_limit_and_campaign_caps_still_hold(
    redis: Redis, settings: Settings
) -> None:
    """DISPATCH_PACING=min_gap (no window policy): no sender window, but a daily limit and a
    campaign's own cap are still limits the user set, and they hold."""
    limits = SenderLimits(redis, settings, window="none")
    capped = CampaignLimits(2, hourly_limit=2)
    outcome = await limits.decide(
        _request(T0, [(n, 1) for n in range(5)] + [(10 + n, 2) for n in range(4)],
                 CampaignLimits(1), capped, hourly=1, daily_limit=4)
    )  # fmt: skip
    # the sender's hourly 1 does not apply; the day's 4 do; campaign 2 gets at most 2 an hour
    assert sorted(outcome.granted) == [0, 1, 2, 3]
    assert outcome.reason is WaitReason.DAILY_LIMIT
    assert await limits.day_usage(7, T0) == 4
    later = await limits.decide(
        _request(T0 + DAY, [(20 + n, 2) for n in range(4)], capped, hourly=1, daily_limit=9)
    )
    assert sorted(later.granted) == [20, 21] and {w for _, _, w in later.deferred} == {
        WaitReason.CAMPAIGN_CAP
    }


async def test_a_paused_capped_campaign_takes_its_later_windows_anew(
    redis: Redis, settings: Settings
) -> None:
    """Paused, its held emails leave the queue; resumed, they are decided again: they take
    the next windows' places, not places after the ones they had reserved (a doubled wait)."""
    limits = SenderLimits(redis, settings)
    capped = CampaignLimits(1, hourly_limit=2)
    first = await limits.decide(_request(T0, [(i, 1) for i in range(6)], capped, hourly=1000))
    assert [due for _, due, _ in first.deferred] == [T0 + HOUR] * 2 + [T0 + 2 * HOUR] * 2
    await RedisQueue(redis).forget_campaign_slots(7, 1)  # what pausing the campaign does
    again = await limits.decide(
        _request(T0 + 5, [(i, 1) for i in range(2, 6)], capped, hourly=1000)
    )
    assert [due for _, due, _ in again.deferred] == [T0 + HOUR] * 2 + [T0 + 2 * HOUR] * 2
