"""Daily limits, the random delay and the reasons for waiting, as the API shows them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.config import Settings, SettingsError, load_settings
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.web_session import dev_login

BASE = {"subject": "s", "body": "b", "recipients": ["a@example.com"]}


async def test_bad_limits_are_refused_naming_the_field(make_client: Start, store: Store) -> None:
    client = await make_client()
    headers = auth(await new_token(store))
    extra: dict[str, Any]
    for extra, field in (
        ({"daily_limit": 0}, "daily_limit"),
        ({"daily_limit": "lots"}, "daily_limit"),
        ({"delay_jitter_ms": -1}, "delay_jitter_ms"),
        ({"delay_jitter_ms": 86_400_001}, "delay_jitter_ms"),
    ):
        response = await client.post("/api/emails/schedule", json=BASE | extra, headers=headers)
        body = await response.json()
        assert response.status == 422 and body["error"]["field"] == field, (extra, body)
        assert field in body["error"]["message"]
    sender = {"from_address": "cold@example.com", "transport": "capture"}
    for extra, field in (
        ({"daily_limit": 0}, "daily_limit"),
        ({"daily_limit": 1.5}, "daily_limit"),
        ({"delay_jitter_ms": "soon"}, "delay_jitter_ms"),
    ):
        response = await client.post("/api/senders", json=sender | extra, headers=headers)
        body = await response.json()
        assert response.status == 422 and body["error"]["field"] == field, (extra, body)


def test_dispatch_day_seconds_is_validated() -> None:
    assert load_settings({"DISPATCH_DAY_SECONDS": "60"}).day_seconds == 60
    assert load_settings({}).day_seconds == 86_400
    for bad in ("0", "a day", "9999999999"):
        try:
            load_settings({"DISPATCH_DAY_SECONDS": bad})
        except SettingsError as exc:
            assert "DISPATCH_DAY_SECONDS" in str(exc)
        else:
            raise AssertionError(f"DISPATCH_DAY_SECONDS={bad} was accepted")


async def _json(response: Any) -> Any:
    assert response.status < 300, await response.text()
    return await response.json()


async def test_a_daily_limit_holds_the_rest_for_the_next_day_and_says_so(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client(replace(settings, max_emails_per_hour=100))
    headers = auth(await new_token(store, DEV_EMAIL))  # the dev login's user: the page too
    sender = await _json(
        await client.post(
            "/api/senders",
            json={"from_address": "cold@example.com", "transport": "capture", "daily_limit": 30},
            headers=headers,
        )
    )
    assert sender["daily_limit"] == 30 and sender["delay_jitter_ms"] == 0
    patched = await _json(
        await client.patch(
            f"/api/senders/{sender['id']}", json={"delay_jitter_ms": 50}, headers=headers
        )
    )
    assert patched["delay_jitter_ms"] == 50 and patched["daily_limit"] == 30
    payload = {
        "subject": "s",
        "body": "b",
        "sender": "cold@example.com",
        "daily_limit": 3,
        "delay_jitter_ms": 20,
        "recipients": [f"c{i}@example.com" for i in range(5)],
    }
    created = await _json(await client.post("/api/emails/schedule", json=payload, headers=headers))
    campaign = created["campaign"]
    assert (campaign["daily_limit"], campaign["delay_jitter_ms"]) == (3, 20)

    async def three_sent_two_waiting() -> bool:
        detail = await _json(await client.get(f"/api/campaigns/{campaign['id']}", headers=headers))
        return bool(detail["counts"]["sent"] == 3 and detail["counts"]["rate_limited"] == 2)

    await wait_for(three_sent_two_waiting)
    detail = await _json(await client.get(f"/api/campaigns/{campaign['id']}", headers=headers))
    day = settings.day_seconds
    tomorrow = datetime.fromtimestamp((datetime.now(UTC).timestamp() // day + 1) * day, UTC)
    iso = tomorrow.isoformat().replace("+00:00", "Z")
    assert detail["waiting"] == [{"reason": "daily_limit", "count": 2, "until": iso}]
    assert detail["eta"] >= iso  # the last email goes tomorrow at the earliest
    listed = await _json(await client.get("/api/emails/scheduled", headers=headers))
    assert [item["waiting"] for item in listed["items"]] == [
        {"reason": "daily_limit", "until": iso}
    ] * 2
    stats = await _json(await client.get("/api/stats", headers=headers))
    cold = next(s for s in stats["senders"] if s["from_address"] == "cold@example.com")
    assert (cold["daily_limit"], cold["sent_today"], cold["day_seconds"]) == (30, 3, day)
    await dev_login(client)
    page = await client.get(f"/campaigns/{campaign['id']}")
    html = await page.text()
    assert 'data-wait="daily_limit"' in html and "data-eta" in html
