"""Pacing that decides once: every limit at once, no budget wasted, caps hold back only theirs.

Counts are taken window by window from `dispatches.sent_at` (recorded a few ms after the
pacing decision; starts are placed just after a window opens, see `just_after_next_window`).
"""

from __future__ import annotations

import time
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
from .support.processes import Proc
from .support.smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(180)


async def _schedule(client: AppClient, token: str, **payload: Any) -> int:
    payload.setdefault("subject", "s")
    payload.setdefault("body", "b")
    response = await client.post("/api/emails/schedule", json=payload, headers=auth(token))
    assert response.status == 201, await response.text()
    return int((await response.json())["campaign"]["id"])


async def _sent(store: Store, campaign_id: int | None = None) -> list[float]:
    rows = await store.pool.fetch(
        """SELECT sent_at FROM dispatches WHERE status = 'sent'
           AND ($1::bigint IS NULL OR campaign_id = $1) ORDER BY sent_at""",
        campaign_id,
    )
    return [r["sent_at"].timestamp() for r in rows]


def _per_window(times: list[float], window_s: float) -> list[int]:
    """Sends per window, from the first send's window to the last's (empty windows as 0)."""
    windows = Counter(int(t // window_s) for t in times)
    first, last = min(windows), max(windows)
    return [windows.get(w, 0) for w in range(first, last + 1)]


def _start_in_this_hour(margin_s: float = 60) -> str | None:
    """None (now) unless the hour ends within `margin_s`; then just after it opens."""
    if 3600 - time.time() % 3600 > margin_s:
        return None
    return just_after_next_window(3600)


async def test_a_delay_and_a_window_limit_together_fill_every_window(
    make_client: Start, settings: Settings, store: Store, redis: Redis
) -> None:
    # The 10 per 20 s with a 1 s delay, scaled: 10 per 4 s with a 200 ms delay.
    paced = replace(settings, max_emails_per_hour=10, rate_window_seconds=4)
    client = await make_client(paced)
    campaign = await _schedule(
        client,
        await new_token(store),
        delay_between_ms=200,
        start_at=just_after_next_window(4),
        recipients=[f"d{i:02d}@example.com" for i in range(20)],
    )

    async def all_sent() -> bool:
        return len(await _sent(store, campaign)) == 20

    await wait_for(all_sent, within=60)
    # Before the fix, the window was charged for what the gap then refused: [10, 5, 5].
    assert _per_window(await _sent(store, campaign), 4) == [10, 10]

    async def no_grant_left() -> bool:  # every grant is settled once its send is recorded
        return int(await redis.hlen("dispatch:{q0}:grants")) == 0

    await wait_for(no_grant_left)


async def test_a_campaign_cap_holds_back_only_its_campaign(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client(replace(settings, max_emails_per_hour=1000))
    token = await new_token(store)
    start = _start_in_this_hour()
    capped = await _schedule(
        client,
        token,
        hourly_limit=3,
        start_at=start,
        recipients=[f"a{i}@example.com" for i in range(10)],
    )
    free = await _schedule(
        client, token, start_at=start, recipients=[f"b{i}@example.com" for i in range(5)]
    )

    async def free_all_sent() -> bool:
        return len(await _sent(store, free)) == 5

    await wait_for(free_all_sent, within=20)
    assert len(await _sent(store, capped)) == 3
    waiting = await store.pool.fetch(
        "SELECT wait_reason, wait_until FROM dispatches WHERE campaign_id = $1 AND status = $2",
        capped,
        "rate_limited",
    )
    assert len(waiting) == 7 and {r["wait_reason"] for r in waiting} == {"campaign_cap"}
    # The held emails of A wait for A's next window; B's went inside A's first one.
    next_window = (int(time.time()) // 3600 + 1) * 3600
    assert min(r["wait_until"].timestamp() for r in waiting) == next_window
    assert max(await _sent(store, free)) < next_window


async def test_a_sigkilled_worker_does_not_burn_the_window(
    make_client: Start, settings: Settings, store: Store, env: dict[str, str], tmp_path: Path
) -> None:
    """Ten grants of a 10-per-hour window are in flight when the worker is SIGKILLed.

    The restarted worker sends all ten in the same window: the reaper returned the grants.
    """
    with SmtpSink() as smtp:
        smtp.sink.data_delay_s = 30  # every send hangs in DATA: granted, not sent
        worker_env = env | {
            "DISPATCH_TRANSPORT": "smtp",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_TLS": "none",
            "MAX_EMAILS_PER_HOUR": "10",
            "DISPATCH_LEASE_SECONDS": "2",
            "SMTP_POOL_SIZE": "10",  # one connection per email: all ten hang at once
        }
        first = Proc(["run", "--role", "worker"], worker_env, tmp_path / "worker1.log")
        first.wait_for_output(r"Running worker on")
        api = replace(settings, transport="smtp", max_emails_per_hour=10)
        client = await make_client(api, frozenset({"api"}))
        campaign = await _schedule(
            client,
            await new_token(store),
            start_at=_start_in_this_hour(),
            recipients=[f"k{i}@example.com" for i in range(10)],
        )

        async def all_in_flight() -> bool:
            return smtp.sink.data_started >= 10

        await wait_for(all_in_flight)
        first.kill()
        smtp.sink.data_delay_s = 0
        second = Proc(
            ["run", "--role", "worker", "--role", "sweeper"],
            worker_env,
            tmp_path / "worker2.log",
        )
        try:

            async def all_sent() -> bool:
                return len(await _sent(store, campaign)) == 10

            # Before the fix the window stayed charged: parked until the hour's end.
            await wait_for(all_sent, within=40)
        finally:
            assert second.stop() == 0, second.output()


async def test_several_worker_processes_share_one_senders_limits_exactly(
    make_client: Start, settings: Settings, store: Store, env: dict[str, str], tmp_path: Path
) -> None:
    """A user's settings at once: 4 per 2 s window, 6 per 6 s day, a delay with a random
    part on one campaign, a daily cap on the other, and three worker processes.

    The gap itself is asserted on an injected clock (test_limits.py): `sent_at` is the group
    commit's time, too loose under load to measure 100 ms.
    """
    window_s, day_s = 2, 6
    limits = {"DISPATCH_RATE_WINDOW_SECONDS": str(window_s), "DISPATCH_DAY_SECONDS": str(day_s)}
    workers = [
        Proc(["run", "--role", "worker"], env | limits, tmp_path / f"w{n}.log") for n in range(3)
    ]
    for worker in workers:
        worker.wait_for_output(r"Running worker on")
    api = replace(settings, max_emails_per_hour=4, rate_window_seconds=window_s, day_seconds=day_s)
    client = await make_client(api, frozenset({"api"}))
    token = await new_token(store)
    sender = await client.post(
        "/api/senders",
        json={"from_address": "cold@example.com", "transport": "capture", "daily_limit": 6},
        headers=auth(token),
    )
    assert sender.status == 201, await sender.text()
    start = just_after_next_window(day_s)
    common = {"sender": "cold@example.com", "start_at": start}
    slow = await _schedule(
        client,
        token,
        delay_between_ms=100,
        delay_jitter_ms=100,
        recipients=[f"s{i}@example.com" for i in range(10)],
        **common,
    )
    capped = await _schedule(
        client, token, daily_limit=2, recipients=[f"c{i}@example.com" for i in range(5)], **common
    )
    try:

        async def all_sent() -> bool:
            return len(await _sent(store)) == 15

        await wait_for(all_sent, within=90)
    finally:
        for worker in workers:
            assert worker.stop() == 0, worker.output()
    times = await _sent(store)
    assert _per_window(times, day_s) == [6, 6, 3]
    windows = _per_window(times, window_s)
    assert max(windows) <= 4 and windows[0] == 4 and windows[3] == 4, windows
    assert max(_per_window(await _sent(store, capped), day_s)) <= 2
    assert len(await _sent(store, slow)) == 10


async def test_sliding_window_with_a_delay_uses_its_whole_budget(
    make_client: Start, settings: Settings, store: Store
) -> None:
    paced = replace(
        settings, max_emails_per_hour=4, rate_window_seconds=2, pacing=("sliding_window", "min_gap")
    )
    client = await make_client(paced)
    campaign = await _schedule(
        client,
        await new_token(store),
        delay_between_ms=150,
        recipients=[f"w{i}@example.com" for i in range(12)],
    )

    async def all_sent() -> bool:
        return len(await _sent(store, campaign)) == 12

    await wait_for(all_sent, within=60)
    # When the capture transport took each email (sent_at, a group commit, drifts under load)
    rows = await store.pool.fetch(
        """SELECT m.received_at FROM captured_messages m JOIN dispatches d ON d.id = m.dispatch_id
           WHERE d.campaign_id = $1 ORDER BY m.received_at""",
        campaign,
    )
    times = [r["received_at"].timestamp() for r in rows]
    # Never more than 4 in any 2 s, and every window from the first send holds its 4.
    assert all(times[i + 4] - times[i] >= 2.0 - 0.25 for i in range(len(times) - 4)), times
    # Each window's four go together (three 150 ms gaps): no part of its budget is lost.
    assert all(times[k + 3] - times[k] < 1.0 for k in (0, 4, 8)), times
