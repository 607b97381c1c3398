"""Business hours: when a weekly window next opens (DST, weekends), and a running app that
parks a sender outside its window and sends inside it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web

from dispatch_engine.app import create_app
from dispatch_engine.config import Settings, SettingsError, load_settings
from dispatch_engine.plugins import get_plugin_manager
from dispatch_engine.store import Store
from dispatch_engine.testing import appliance
from dispatch_engine.weekly import parse_weekly_window

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for

PACING = ("business_hours", "fixed_window", "min_gap")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


BERLIN = parse_weekly_window("Mon-Fri 09:00-17:00 Europe/Berlin")


@pytest.mark.parametrize(
    ("now", "opens"),
    [
        # Saturday before the spring change (Sun 31 March): Monday 09:00 CEST is 07:00 UTC.
        (utc(2024, 3, 30, 12), utc(2024, 4, 1, 7)),
        # Friday 17:30 CET, just closed: the weekend and the DST change lie between.
        (utc(2024, 3, 29, 16, 30), utc(2024, 4, 1, 7)),
        # Friday 08:59 CET: opens at 09:00 CET, 08:00 UTC, the same day.
        (utc(2024, 3, 29, 7, 59), utc(2024, 3, 29, 8)),
        # Friday 16:59 CET: open, so now.
        (utc(2024, 3, 29, 15, 59), utc(2024, 3, 29, 15, 59)),
        # Friday evening before the autumn change (Sun 27 Oct): Monday 09:00 CET is 08:00 UTC.
        (utc(2024, 10, 25, 16), utc(2024, 10, 28, 8)),
        # Monday 17:00 CEST sharp: closed (the end is exclusive); Tuesday 09:00 CEST.
        (utc(2024, 4, 1, 15), utc(2024, 4, 2, 7)),
    ],
)
def test_next_opening_in_berlin(now: datetime, opens: datetime) -> None:
    assert BERLIN.next_opening(now) == opens
    assert BERLIN.is_open(now) == (opens == now)


def test_next_opening_across_the_us_autumn_change_and_a_weekend() -> None:
    new_york = parse_weekly_window("Mon-Fri 09:00-17:00 America/New_York")
    # Saturday 2 Nov 2024, EDT; the clocks go back on Sunday; Monday 09:00 EST is 14:00 UTC.
    assert new_york.next_opening(utc(2024, 11, 2, 18)) == utc(2024, 11, 4, 14)
    assert new_york.next_opening(utc(2024, 11, 1, 12, 59)) == utc(2024, 11, 1, 13)  # EDT


def test_a_start_the_clocks_skip_opens_when_they_jump() -> None:
    # 02:30 does not exist in Berlin on 31 March 2024: at 01:00 UTC 02:00 CET became 03:00 CEST.
    night = parse_weekly_window("Sun 02:30-04:00 Europe/Berlin")
    assert night.next_opening(utc(2024, 3, 30, 12)) == utc(2024, 3, 31, 1)
    assert night.is_open(utc(2024, 3, 31, 1, 59)) and not night.is_open(utc(2024, 3, 31, 2))


def test_a_repeated_time_counts_from_its_first_occurrence() -> None:
    # 02:30 happens twice in Berlin on 27 October 2024: first at 00:30 UTC (CEST).
    night = parse_weekly_window("Sun 02:30-03:00 Europe/Berlin")
    assert night.next_opening(utc(2024, 10, 26, 12)) == utc(2024, 10, 27, 0, 30)
    assert night.is_open(utc(2024, 10, 27, 1, 59)) and not night.is_open(utc(2024, 10, 27, 2))


def test_day_lists_ranges_and_whole_days() -> None:
    weekend = parse_weekly_window("Fri-Mon 00:00-24:00 UTC")  # wraps over the weekend
    assert weekend.days == {4, 5, 6, 0}
    assert weekend.is_open(utc(2024, 6, 2, 23, 59))  # Sunday night
    assert weekend.next_opening(utc(2024, 6, 4, 10)) == utc(2024, 6, 7)  # Tuesday -> Friday
    some = parse_weekly_window("mon,Wednesday-thu 10:00-11:00 Asia/Tokyo")
    assert some.days == {0, 2, 3}
    assert some.next_opening(utc(2024, 6, 4, 3)) == utc(2024, 6, 5, 1)  # Tue -> Wed 10:00 JST


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("Mon-Fri 9-17 Europe/Berlin", "expected days, hours and a time zone"),
        ("Mon-Fry 09:00-17:00 UTC", "'Fry' is not a day"),
        ("Mon-Fri 17:00-09:00 UTC", "must end after it starts"),
        ("Mon-Fri 09:00-17:00 Europe/Berln", "'Europe/Berln' is not a time zone"),
        ("Mon-Fri 09:00-25:00 UTC", "'25:00' is not a time of day"),
    ],
)
def test_dispatch_business_hours_is_validated(raw: str, says: str) -> None:
    with pytest.raises(SettingsError) as raised:  # at start, when the plugins load
        get_plugin_manager(load_settings({"DISPATCH_BUSINESS_HOURS": raw}))
    message = str(raised.value)
    assert message.startswith("DISPATCH_BUSINESS_HOURS must look like 'Mon-Fri 09:00-17:00")
    assert says in message


async def test_listing_business_hours_without_a_window_stops_the_start(
    settings: Settings,
) -> None:
    runner = web.AppRunner(create_app(replace(settings, pacing=PACING)), handle_signals=False)
    try:
        with pytest.raises(SettingsError, match="DISPATCH_BUSINESS_HOURS must be set"):
            await runner.setup()
    finally:
        await runner.cleanup()


def _closed_window(now: datetime) -> tuple[str, datetime]:
    """A window two days from now in Tokyo (no DST), and when it opens."""
    tokyo = ZoneInfo("Asia/Tokyo")
    day = now.astimezone(tokyo).date() + timedelta(days=2)
    opens = datetime.combine(day, time(9), tzinfo=tokyo)
    return f"{opens:%a} 09:00-17:00 Asia/Tokyo", opens


async def test_outside_the_window_emails_stay_queued_and_the_sender_is_parked_until_it_opens(
    make_client: Start, settings: Settings, store: Store
) -> None:
    spec, opens = _closed_window(datetime.now(UTC))
    configured = load_settings(
        {"DISPATCH_BUSINESS_HOURS": spec, "DISPATCH_PACING": ",".join(PACING)}
    )
    client = await make_client(
        replace(settings, pacing=configured.pacing).with_environ(DISPATCH_BUSINESS_HOURS=spec)
    )
    headers = auth(await new_token(store))
    payload = {"subject": "s", "body": "b", "recipients": [f"w{i}@example.com" for i in range(3)]}
    assert (await client.post("/api/emails/schedule", json=payload, headers=headers)).ok
    stats: dict[str, object] = {}

    async def parked() -> bool:
        nonlocal stats
        stats = (await (await client.get("/api/stats", headers=headers)).json())["senders"][0]
        return stats["parked_until"] is not None

    await wait_for(parked)
    parked_until = datetime.fromisoformat(str(stats["parked_until"]))
    assert opens <= parked_until <= opens + timedelta(milliseconds=250), (parked_until, opens)
    assert stats["queue_depth"] == 3
    statuses = await store.pool.fetch("SELECT status, count(*) FROM dispatches GROUP BY status")
    assert {r["status"]: r["count"] for r in statuses} == {"rate_limited": 3}
    assert await store.pool.fetchval("SELECT count(*) FROM ledger") == 0
    assert await store.pool.fetchval("SELECT count(*) FROM captured_messages") == 0


async def test_inside_the_window_emails_are_sent() -> None:
    # The plugin author's harness: private servers, all roles, the capture inbox, a token.
    window = {"DISPATCH_BUSINESS_HOURS": "Mon-Sun 00:00-24:00 Europe/Berlin"}
    async with appliance(pacing=PACING, environ=window) as app:
        recipients = [f"in{i}@example.com" for i in range(3)]
        campaign = await app.schedule(subject="Open", body="Hi", recipients=recipients)
        detail = await app.wait_for_campaign(campaign["id"])
        assert detail["counts"]["sent"] == 3
        assert sorted(m["to"][0] for m in await app.inbox()) == recipients
        stats = await app.request("GET", "/api/stats")
        assert stats["senders"][0]["parked_until"] is None
