"""Issue 15's promise as a user meets it, every part together: the email carries both RFC
8058 headers; a GET of its link changes nothing; a one-click POST with no cookie or token
unsubscribes; a later campaign reports the address as suppressed; and an email to it that
was already queued for later ends `suppressed` and is never sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .test_unsubscribe import ONE_CLICK, ONE_CLICK_BODY, _captured, _link, _schedule, _stranger


async def test_one_click_unsubscribe_suppresses_later_and_queued_emails(
    make_client: Start, store: Store
) -> None:
    client = await make_client()
    headers = auth(await new_token(store))
    later = (datetime.now(UTC) + timedelta(seconds=15)).isoformat()
    queued = await _schedule(client, headers, ["kim@example.com"], start_at=later)
    first = await _schedule(client, headers, ["Kim@Example.com", "lee@example.com"])
    message = (await _captured(store, first))["Kim@example.com"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = _link(message)

    status, _, _ = await _stranger(client, "GET", link)
    assert status == 200
    listed = await client.get("/api/suppressions", headers=headers)
    assert (await listed.json())["items"] == []  # a link scanner unsubscribes nobody

    status, _, _ = await _stranger(client, "POST", link, data=ONE_CLICK_BODY, headers=ONE_CLICK)
    assert 200 <= status < 300
    still = await store.pool.fetchval(
        "SELECT status FROM dispatches WHERE campaign_id = $1", queued
    )
    assert still == "scheduled", "the later email came due before the unsubscribe: a slow run"

    response = await client.post(
        "/api/emails/schedule",
        json={
            "subject": "Again",
            "body": "Hi",
            "recipients": ["kim@EXAMPLE.com", "max@example.com"],
        },
        headers=headers,
    )
    assert response.status == 201, await response.text()
    answer = await response.json()
    assert answer["accepted"] == 1 and answer["suppressed_total"] == 1
    (rejected,) = answer["rejected"]
    assert rejected["value"].lower() == "kim@example.com" and rejected["reason"].startswith(
        "suppressed: unsubscribed on "
    )

    async def queued_one_suppressed() -> bool:
        status = await store.pool.fetchval(
            "SELECT status FROM dispatches WHERE campaign_id = $1", queued
        )
        return status == "suppressed"

    await wait_for(queued_one_suppressed)
    received = await store.pool.fetchval(
        """SELECT count(*) FROM captured_messages m JOIN dispatches d ON d.id = m.dispatch_id
           WHERE lower(d.recipient) = 'kim@example.com'"""
    )
    assert received == 1  # the first campaign's email only
