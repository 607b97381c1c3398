"""Warm-up: a new mailbox's daily limit ramps up by the calendar, with every other limit."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dispatch_engine.config import Settings
from dispatch_engine.errors import ValidationError
from dispatch_engine.models import Sender, Warmup
from dispatch_engine.store import Store
from dispatch_engine.warmup import daily_limit_now, parse_warmup, warmup_limit

from .support.app_client import Start
from .support.helpers import auth, just_after_next_window, new_token, wait_for

DAY_MS = 86_400_000
STARTED = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)  # a minute before the next day


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def test_the_ramp_adds_its_step_each_calendar_day_up_to_its_max() -> None:
    ramp = Warmup(10, 5, 80, STARTED)
    days = [warmup_limit(ramp, _ms(STARTED + timedelta(days=d)), DAY_MS) for d in range(20)]
    assert days[:4] == [10, 15, 20, 25]
    assert max(days) == 80 and days[14:] == [80] * 6
    # Two minutes after the start is already the next (UTC, pacing) day.
    assert warmup_limit(ramp, _ms(STARTED + timedelta(minutes=2)), DAY_MS) == 15
    assert warmup_limit(ramp, _ms(STARTED - timedelta(days=3)), DAY_MS) == 10  # clock skew


def test_the_lower_of_the_daily_limit_and_the_ramp_holds() -> None:
    sender = Sender(1, 1, "a@example.com", "", None, "capture", {}, 50, 0, daily_limit=18)
    assert daily_limit_now(sender, _ms(STARTED), DAY_MS) == 18
    ramped = replace(sender, warmup=Warmup(10, 5, 80, STARTED))
    later = _ms(STARTED + timedelta(days=1))
    assert daily_limit_now(ramped, _ms(STARTED), DAY_MS) == 10
    assert daily_limit_now(ramped, later, DAY_MS) == 15
    assert daily_limit_now(replace(ramped, daily_limit=None), later + 9 * DAY_MS, DAY_MS) == 60
    assert daily_limit_now(ramped, later + 9 * DAY_MS, DAY_MS) == 18


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("fast", "warmup"),
        ({"start": 0, "step": 5, "max": 80}, "warmup.start"),
        ({"start": 10, "step": -1, "max": 80}, "warmup.step"),
        ({"start": 10, "step": 5, "max": 5}, "warmup.max"),
        ({"start": 10, "step": 5}, "warmup.max"),
        ({"start": 10, "step": 5, "max": 80, "speed": 2}, "warmup.speed"),
        ({"start": True, "step": 5, "max": 80}, "warmup.start"),
    ],
)
def test_a_bad_ramp_is_refused_naming_its_field(value: object, field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_warmup(value, None)
    assert refused.value.field == field


def test_saving_the_same_ramp_keeps_its_start_and_a_new_one_restarts_it() -> None:
    current = Warmup(10, 5, 80, STARTED)
    same = parse_warmup({"start": 10, "step": 5, "max": 80}, current)
    assert same["warmup_started_at"] == STARTED
    changed = parse_warmup({"start": 10, "step": 10, "max": 80}, current)
    assert changed["warmup_started_at"] > STARTED
    assert parse_warmup(None, current)["warmup_start"] is None


async def test_a_warming_sender_sends_its_ramp_each_day_within_its_daily_limit(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """Days of 5 s: the ramp (1, then +2 a day, at most 4) and a daily limit of 10 together."""
    day_s = 5
    client = await make_client(replace(settings, day_seconds=day_s, max_emails_per_hour=100))
    token = await new_token(store)
    created = await client.post(
        "/api/senders",
        json={"from_address": "new@example.com", "transport": "capture", "daily_limit": 10,
              "warmup": {"start": 1, "step": 2, "max": 4}},
        headers=auth(token),
    )  # fmt: skip
    assert created.status == 201, await created.text()
    started = datetime.fromisoformat((await created.json())["warmup"]["started_at"])
    start_at = just_after_next_window(day_s)
    payload = {"subject": "s", "body": "b", "sender": "new@example.com", "start_at": start_at,
               "recipients": [f"r{i}@example.com" for i in range(9)]}  # fmt: skip
    response = await client.post("/api/emails/schedule", json=payload, headers=auth(token))
    assert response.status == 201, await response.text()

    async def all_sent() -> bool:
        count = await store.pool.fetchval("SELECT count(*) FROM dispatches WHERE status = 'sent'")
        return int(count) == 9

    await wait_for(all_sent, within=60)
    rows = await store.pool.fetch("SELECT sent_at FROM dispatches ORDER BY sent_at")
    per_day = Counter(int(r["sent_at"].timestamp() // day_s) for r in rows)
    first_ramp_day = int(started.timestamp() // day_s)
    expected, left = {}, 9
    for day in range(min(per_day), max(per_day) + 1):
        expected[day] = min(left, 1 + 2 * (day - first_ramp_day), 4)
        left -= expected[day]
    assert dict(per_day) == expected and left == 0
    stats = await client.get("/api/stats", headers=auth(token))
    (shown,) = [
        s for s in (await stats.json())["senders"] if s["from_address"] == "new@example.com"
    ]
    today = int(datetime.now(UTC).timestamp() // day_s) - first_ramp_day
    assert shown["warmup"]["day"] in (today, today + 1)  # the page may be read at a day's end
    assert shown["effective_daily_limit"] == min(4, 1 + 2 * shown["warmup"]["day"])
