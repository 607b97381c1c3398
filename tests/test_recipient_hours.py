"""A campaign's sending window in each recipient's own time zone, across DST changes and
holidays, on an injected clock; then a real run where one recipient's window is shut."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from dispatch_engine.config import Settings
from dispatch_engine.errors import ValidationError
from dispatch_engine.models import (
    CampaignContent,
    CampaignStatus,
    DispatchJob,
    DispatchStatus,
    Sender,
)
from dispatch_engine.recipient_hours import SendWindow, parse_send_window
from dispatch_engine.render import CompiledCampaign
from dispatch_engine.store import Store
from dispatch_engine.worker.hours import opening_for

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for

SENDER = Sender(7, 1, "a@example.com", "", None, "capture", {}, 100, 0)


def _campaign(window: SendWindow) -> CompiledCampaign:
    content = CampaignContent(1, 1, 7, "s", "b", None, 0, None, send_window=window.window())
    return CompiledCampaign(content, SENDER)


def _job(zone: str | None) -> DispatchJob:
    variables = {} if zone is None else {"timezone": zone}
    return DispatchJob(1, 1, 7, 1, "r@example.com", variables, DispatchStatus.SCHEDULED,
                       CampaignStatus.RUNNING, b"k", 0, datetime.now(UTC))  # fmt: skip


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


OFFICE = SendWindow("Mon-Fri 09:00-17:00", "Europe/Berlin", (date(2026, 12, 25),))


def test_the_window_follows_each_recipients_clock_across_a_dst_change() -> None:
    """New York springs forward on 2026-03-08, Berlin only on 03-29: for three weeks the
    two are 5 hours apart instead of 6. Monday 13:30 UTC is 08:30 in New York before the
    change (shut until 14:00 UTC) and 09:30 after it (open)."""
    campaign = _campaign(OFFICE)
    before, after = _utc("2026-03-02T13:30"), _utc("2026-03-09T13:30")
    assert opening_for(_job("America/New_York"), campaign, before) == _utc("2026-03-02T14:00")
    assert opening_for(_job("America/New_York"), campaign, after) == after
    assert opening_for(_job(None), campaign, before) == before  # the campaign's zone: Berlin
    # Berlin's own change: 08:30 UTC is 09:30 CET on 03-27 (open), 10:30 CEST on 03-30.
    late = _utc("2026-03-27T16:30")  # 17:30 in Berlin: shut until Monday 09:00 CEST
    assert opening_for(_job("Europe/Berlin"), campaign, late) == _utc("2026-03-30T07:00")


def test_a_holiday_keeps_the_window_shut_in_the_recipients_own_calendar() -> None:
    campaign = _campaign(OFFICE)
    christmas = _utc("2026-12-25T10:00")  # a Friday
    assert opening_for(_job("Europe/Berlin"), campaign, christmas) == _utc("2026-12-28T08:00")
    # In Honolulu it is still Thursday the 24th, 00:00: its window opens at 09:00 local
    # the same day; Friday (its own 25th) is the holiday, so after Thursday comes Monday.
    honolulu = _utc("2026-12-24T10:00")
    assert opening_for(_job("Pacific/Honolulu"), campaign, honolulu) == _utc("2026-12-24T19:00")
    friday = _utc("2026-12-26T04:00")  # 18:00 on Friday the 25th in Honolulu
    assert opening_for(_job("Pacific/Honolulu"), campaign, friday) == _utc("2026-12-28T19:00")


def test_a_recipient_zone_that_is_unknown_falls_back_to_the_campaigns() -> None:
    campaign = _campaign(OFFICE)
    sunday = _utc("2026-03-01T12:00")
    assert opening_for(_job("Mars/Olympus"), campaign, sunday) == _utc("2026-03-02T08:00")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"send_window": "weekdays"}, "send_window"),
        ({"send_window": "Mon-Fri 17:00-09:00"}, "send_window"),
        ({"send_window": "Mon-Fri 09:00-17:00", "timezone": "Europe/Nowhere"}, "timezone"),
        ({"send_window": "Mon-Fri 09:00-17:00 UTC", "timezone": "Europe/Berlin"}, "send_window"),
        ({"send_window": "Mon-Fri 09:00-17:00", "holidays": ["25/12/2026"]}, "holidays"),
        ({"send_window": "Mon-Fri 09:00-17:00", "holidays": ["2026-12-25"] * 400}, "holidays"),
        ({"holidays": ["2026-12-25"]}, "holidays"),
        ({"send_window": 5}, "send_window"),
    ],
)
def test_a_bad_window_is_refused_naming_its_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_send_window(data)
    assert refused.value.field == field


def test_the_zone_may_come_with_the_hours_or_in_its_own_field() -> None:
    inline = parse_send_window({"send_window": "Mon-Fri 09:00-17:00 Asia/Tokyo"})
    assert inline is not None and inline.timezone == "Asia/Tokyo"
    both = parse_send_window(
        {"send_window": "Sat 10:00-12:00", "holidays": "2026-12-26, 2026-12-19"}
    )
    assert (
        both is not None
        and both.timezone == "UTC"
        and both.holidays == (date(2026, 12, 19), date(2026, 12, 26))
    )


def _etc_zone(offset_h: int) -> str:
    return "Etc/GMT" if offset_h == 0 else f"Etc/GMT{-offset_h:+d}"  # Etc/GMT-3 is UTC+3


async def test_an_email_waits_for_its_recipients_window_while_anothers_goes(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """A window of 11:00-14:00, all week. Ann's zone makes it about 12:30 for her now (open),
    Bo's is 10 hours off (shut); Cy's zone is a typo and her row is refused by its line."""
    now = datetime.now(UTC)
    ann_offset = 12 - now.hour  # her local hour is 12
    bo_offset = ann_offset - 10 if ann_offset > -2 else ann_offset + 10
    client = await make_client(replace(settings))
    token = await new_token(store)
    csv = (
        "email,timezone\n"
        f"ann@example.com,{_etc_zone(ann_offset)}\n"
        f"bo@example.com,{_etc_zone(bo_offset)}\n"
        "cy@example.com,Europe/Atlantis\n"
    )
    payload = {"subject": "s", "body": "b", "recipients_csv": csv,
               "send_window": "Mon-Sun 11:00-14:00"}  # fmt: skip
    response = await client.post("/api/emails/schedule", json=payload, headers=auth(token))
    assert response.status == 201, await response.text()
    body = await response.json()
    assert [(r["line"], r["value"]) for r in body["rejected"]] == [(4, "cy@example.com")]
    assert "timezone" in body["rejected"][0]["reason"]
    campaign = body["campaign"]["id"]

    async def settled() -> bool:
        rows = await store.pool.fetch(
            "SELECT recipient, status, wait_reason FROM dispatches WHERE campaign_id = $1",
            campaign,
        )
        states = {r["recipient"]: (r["status"], r["wait_reason"]) for r in rows}
        return states == {
            "ann@example.com": ("sent", None),
            "bo@example.com": ("rate_limited", "recipient_hours"),
        }

    await wait_for(settled)
    until = await store.pool.fetchval(
        "SELECT wait_until FROM dispatches WHERE recipient = 'bo@example.com'"
    )
    bo_local = now + timedelta(hours=bo_offset)
    opens = bo_local.replace(hour=11, minute=0, second=0, microsecond=0)
    if bo_local.hour >= 11:
        opens += timedelta(days=1)
    assert until == opens - timedelta(hours=bo_offset)
    detail = await client.get(f"/api/campaigns/{campaign}", headers=auth(token))
    shown = (await detail.json())["send_window"]
    assert shown == {"days_and_hours": "Mon-Sun 11:00-14:00", "timezone": "UTC", "holidays": []}
