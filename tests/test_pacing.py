"""Pacing against real servers: windows, gaps, parking senders, fairness, Redis work."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth, just_after_next_window, new_token, wait_for

LIMITED_PLUGIN = """
from pathlib import Path
from dispatch_engine import hookimpl

@hookimpl
def sender_limited(sender_id, resume_at_ms, reason):
    with open(Path(__file__).with_name("limited.log"), "a") as log:
        log.write(f"{sender_id} {resume_at_ms} {reason}\\n")
"""


async def _schedule(client: AppClient, token: str, **payload: Any) -> int:
    payload.setdefault("subject", "s")
    payload.setdefault("body", "b")
    response = await client.post("/api/emails/schedule", json=payload, headers=auth(token))
    assert response.status == 201, await response.text()
    return int((await response.json())["campaign"]["id"])


async def _sent_count(store: Store, campaign_id: int) -> int:
    return int(
        await store.pool.fetchval(
            "SELECT count(*) FROM dispatches WHERE campaign_id = $1 AND status = 'sent'",
            campaign_id,
        )
    )


@pytest.mark.timeout(120)  # 40 emails at 5 per 3 s window: 24 s of real time
async def test_a_sender_over_its_limit_is_parked_and_loses_nothing(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "record_limits.py").write_text(LIMITED_PLUGIN)
    paced = replace(settings, max_emails_per_hour=5, rate_window_seconds=3, plugins_dir=plugins)
    client = await make_client(paced)
    token = await new_token(store)
    recipients = [f"p{i:02d}@example.com" for i in range(40)]
    start = just_after_next_window(3)
    campaign = await _schedule(client, token, recipients=recipients, start_at=start)

    seen_rate_limited = False

    async def all_sent() -> bool:
        nonlocal seen_rate_limited
        statuses = await store.pool.fetch("SELECT status, count(*) FROM dispatches GROUP BY status")
        seen_rate_limited |= any(r["status"] == "rate_limited" for r in statuses)
        return await _sent_count(store, campaign) == 40

    await wait_for(all_sent, within=90)
    rows = await store.pool.fetch(
        "SELECT id, recipient, sent_at FROM dispatches WHERE campaign_id = $1", campaign
    )
    window = {r["id"]: int(r["sent_at"].timestamp() * 1000) // 3000 for r in rows}
    per_window = Counter(window.values())
    assert max(per_window.values()) <= 5, per_window
    assert len(per_window) >= 8
    # Order is kept: every email of an earlier window precedes every email of a later one.
    by_id = sorted(window)
    assert [window[i] for i in by_id] == sorted(window[i] for i in by_id)
    assert seen_rate_limited, "the pushed-back emails must show rate_limited"
    captured = await store.pool.fetchval("SELECT sum(deliveries) FROM captured_messages")
    assert captured == 40
    limited = (plugins / "limited.log").read_text().splitlines()
    assert len(limited) >= 7 and all("hourly limit 5 reached" in line for line in limited)


async def _commands(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def test_redis_work_per_email_does_not_grow_with_the_backlog(
    make_client: Start, settings: Settings, store: Store, redis: Redis
) -> None:
    paced = replace(settings, max_emails_per_hour=5, rate_window_seconds=1)
    client = await make_client(paced)
    per_email = []
    for n, backlog in enumerate((40, 400)):
        token = await new_token(store, f"user{n}@example.com")
        campaign = await _schedule(
            client, token, recipients=[f"b{i}@example.com" for i in range(backlog)]
        )
        await redis.config_resetstat()  # count the sending path; enqueueing is per email anyway

        async def twenty_sent(campaign: int = campaign) -> bool:
            return await _sent_count(store, campaign) >= 20  # four windows of five

        await wait_for(twenty_sent, within=60)
        per_email.append(await _commands(redis) / 20)
        await client.post(f"/api/campaigns/{campaign}/cancel", headers=auth(token))
    print(
        f"Redis commands per sent email: backlog 40: {per_email[0]:.1f}, "
        f"backlog 400: {per_email[1]:.1f}"
    )
    assert per_email[1] <= per_email[0] * 1.5 + 2


async def test_a_small_campaign_is_not_stuck_behind_a_big_one(
    make_client: Start, store: Store
) -> None:
    client = await make_client()
    big = await _schedule(
        client,
        await new_token(store, "big@example.com"),
        recipients=[f"big{i}@example.com" for i in range(3000)],
    )
    small = await _schedule(
        client,
        await new_token(store, "small@example.com"),
        recipients=[f"small{i}@example.com" for i in range(5)],
    )

    async def small_done() -> bool:
        return await _sent_count(store, small) == 5

    await wait_for(small_done, within=60)
    assert await _sent_count(store, big) < 3000, "the small campaign waited for the big one"


async def test_senders_drain_at_their_own_pace(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client(replace(settings, rate_window_seconds=2))
    limits = {"slow@example.com": 10, "fast@example.com": 40}
    campaigns = {}
    for email, limit in limits.items():
        campaigns[email] = await _schedule(
            client,
            await new_token(store, email),
            hourly_limit=limit,
            start_at=just_after_next_window(2),
            recipients=[f"{email.split('@')[0]}{i}@example.com" for i in range(200)],
        )

    async def three_windows_of_fast() -> bool:
        return await _sent_count(store, campaigns["fast@example.com"]) >= 120

    await wait_for(three_windows_of_fast, within=60)
    for email, limit in limits.items():
        rows = await store.pool.fetch(
            "SELECT sent_at FROM dispatches WHERE campaign_id = $1 AND status = 'sent'",
            campaigns[email],
        )
        per_window = Counter(int(r["sent_at"].timestamp() * 1000) // 2000 for r in rows)
        assert max(per_window.values()) <= limit, (email, per_window)
        assert max(per_window.values()) == limit, (email, per_window)


async def test_sliding_window_never_exceeds_the_limit_in_any_window(
    make_client: Start, settings: Settings, store: Store
) -> None:
    paced = replace(
        settings, max_emails_per_hour=4, rate_window_seconds=2, pacing=("sliding_window", "min_gap")
    )
    client = await make_client(paced)
    campaign = await _schedule(
        client, await new_token(store), recipients=[f"s{i}@example.com" for i in range(12)]
    )

    async def all_sent() -> bool:
        return await _sent_count(store, campaign) == 12

    await wait_for(all_sent, within=60)
    times = sorted(
        r["sent_at"].timestamp()
        for r in await store.pool.fetch(
            "SELECT sent_at FROM dispatches WHERE campaign_id = $1", campaign
        )
    )
    # Any 5 consecutive sends span at least the window (less the recording delay).
    assert all(times[i + 4] - times[i] >= 2.0 - 0.25 for i in range(len(times) - 4)), times


async def test_minimum_gap_holds_across_campaigns_of_one_sender(
    make_client: Start, store: Store
) -> None:
    client = await make_client()
    token = await new_token(store)
    first = await _schedule(
        client, token, delay_between_ms=300, recipients=[f"g{i}@example.com" for i in range(4)]
    )
    second = await _schedule(
        client, token, delay_between_ms=300, recipients=[f"h{i}@example.com" for i in range(4)]
    )

    async def all_sent() -> bool:
        return await _sent_count(store, first) + await _sent_count(store, second) == 8

    await wait_for(all_sent, within=60)
    times = sorted(
        r["sent_at"].timestamp() for r in await store.pool.fetch("SELECT sent_at FROM dispatches")
    )
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.3 - 0.1, gaps
