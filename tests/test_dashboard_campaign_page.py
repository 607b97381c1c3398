"""The campaign page tells the truth: a bar with one labelled part per way its emails ended
(an all-failed or cancelled campaign is not a full green bar), and a waiting campaign's
rate and ETA beside its reason."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import asyncpg

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth
from .support.web_session import dev_login

API = frozenset({"api"})


async def _campaign(client: AppClient, store: Store, n: int, **fields: object) -> int:
    user = await store.ensure_user(DEV_EMAIL)
    headers = auth(await store.create_token(user.id, "test"))
    recipients = [f"r{i}@example.com" for i in range(n)]
    payload = {"subject": "Hello", "body": "b", "recipients": recipients, **fields}
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201, await response.text()
    campaign_id: int = (await response.json())["campaign"]["id"]
    return campaign_id


def _parts(html: str) -> dict[str, float]:
    """The bar's parts: status → width in percent."""
    found = re.findall(r'class="progress-part part-(\w+)" style="width: ([\d.]+)%"', html)
    return {status: float(width) for status, width in found}


async def _page(client: AppClient, campaign_id: int) -> str:
    response = await client.get(f"/campaigns/{campaign_id}")
    assert response.status == 200
    return await response.text()


async def test_an_all_failed_campaign_shows_a_red_bar_not_a_green_one(
    make_client: Start, store: Store, pool: asyncpg.Pool
) -> None:
    client = await make_client(roles=API)
    await dev_login(client)
    campaign_id = await _campaign(client, store, 4)
    await pool.execute(
        "UPDATE dispatches SET status = 'failed', finished_at = now() WHERE campaign_id = $1",
        campaign_id,
    )
    html = await _page(client, campaign_id)
    assert _parts(html) == {"failed": 100.0}
    assert 'data-part="failed"' in html and "4 failed" in html
    assert 'aria-valuetext="4 of 4 done (100%): 4 failed"' in html


async def test_each_ending_has_its_labelled_part_of_the_bar(
    make_client: Start, store: Store, pool: asyncpg.Pool
) -> None:
    client = await make_client(roles=API)
    await dev_login(client)
    campaign_id = await _campaign(client, store, 10)
    ids = await pool.fetch(
        "SELECT id FROM dispatches WHERE campaign_id = $1 ORDER BY id", campaign_id
    )
    endings = ["sent", "sent", "bounced", "complained", "suppressed", "failed", "cancelled"]
    for row, status in zip(ids, endings, strict=False):
        await pool.execute(
            "UPDATE dispatches SET status = $2, finished_at = now() WHERE id = $1",
            row["id"],
            status,
        )
    html = await _page(client, campaign_id)
    assert _parts(html) == {
        "sent": 20.0, "bounced": 10.0, "complained": 10.0,
        "failed": 10.0, "suppressed": 10.0, "cancelled": 10.0,
    }  # fmt: skip
    for label in ("2 sent", "1 bounced", "1 complained", "1 suppressed", "1 cancelled"):
        assert label in html, label
    assert "7 of 10 done" in html  # three still to go: the bar's empty rest


async def test_a_cancelled_campaign_shows_what_was_cancelled(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    csrf = await dev_login(client)
    campaign_id = await _campaign(client, store, 3, start_at="2099-01-01T00:00:00Z")
    cancelled = await client.post(
        f"/api/campaigns/{campaign_id}/cancel", headers={"X-CSRF-Token": csrf}
    )
    assert cancelled.status == 200, await cancelled.text()
    assert _parts(await _page(client, campaign_id)) == {"cancelled": 100.0}


async def test_a_waiting_campaign_shows_its_reason_rate_and_eta(
    make_client: Start, store: Store, pool: asyncpg.Pool
) -> None:
    client = await make_client(roles=API)
    await dev_login(client)
    campaign_id = await _campaign(client, store, 5, hourly_limit=2)
    until = datetime.now(UTC) + timedelta(minutes=30)
    await pool.execute(
        """UPDATE dispatches SET status = 'rate_limited', wait_reason = 'campaign_window',
                  wait_until = $2 WHERE campaign_id = $1""",
        campaign_id,
        until,
    )
    html = await _page(client, campaign_id)
    pace = re.search(r"<p class=\"pace\" data-pace>(.*?)</p>", html, re.S)
    assert pace, html
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", pace.group(1)))
    assert "5 campaign window until" in text, text
    assert "up to 2 an hour" in text and "5 to go" in text, text
    assert "last email expected" in text, text
