"""The event hooks, fired by real workers after real sends: what they receive, and when."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token, wait_for
from .support.plugin_dirs import events, plugin_dir

RECORD_EVENTS = """
@hookimpl
async def dispatch_sent(dispatch_id, campaign_id, recipient, message_id, settings):
    record("dispatch_sent", dispatch_id=dispatch_id, campaign_id=campaign_id,
           recipient=recipient, message_id=message_id, transport=settings.transport)

@hookimpl
def dispatch_failed(dispatch_id, campaign_id, recipient, error):
    record("dispatch_failed", dispatch_id=dispatch_id, campaign_id=campaign_id,
           recipient=recipient, error=error)

@hookimpl
def sender_limited(sender_id, resume_at_ms, reason):
    record("sender_limited", sender_id=sender_id, resume_at_ms=resume_at_ms, reason=reason)

@hookimpl
async def campaign_completed(campaign_id, owner_id, settings):
    record("campaign_completed", campaign_id=campaign_id, owner_id=owner_id)
"""

# Refuses recipients named gone…; says "too many" once to recipients named slow….
PICKY = """
from dispatch_engine.transport import (PermanentError, SendResult, SenderRateLimitedError,
                                       TransportSpec)

class Picky:
    slowed = set()

    def __init__(self, context):
        pass

    async def send(self, message):
        to = message.recipients[0]
        if to.startswith("gone"):
            raise PermanentError(f"550 5.1.1 <{to}>: no such user")
        if to.startswith("slow") and to not in Picky.slowed:
            Picky.slowed.add(to)
            raise SenderRateLimitedError("421 4.7.0 too many messages, slow down", 0.5)
        return SendResult("250 ok")

    async def close(self):
        pass

@hookimpl
def register_transports(settings):
    return [TransportSpec("picky", Picky)]
"""


async def _schedule(client: AppClient, headers: dict[str, str], **payload: Any) -> int:
    payload = {"subject": "s", "body": "Hi {{ email }}", **payload}
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201, await response.text()
    return int((await response.json())["campaign"]["id"])


async def _picky_sender(client: AppClient, headers: dict[str, str]) -> int:
    made = await client.post(
        "/api/senders",
        headers=headers,
        json={"from_address": "picky@example.com", "transport": "picky"},
    )
    assert made.status == 201, await made.text()
    return int((await made.json())["id"])


async def _completed(store: Store, *campaigns: int) -> bool:
    sql = "SELECT count(*) FROM campaigns WHERE id = ANY($1::bigint[]) AND status = 'completed'"
    return int(await store.pool.fetchval(sql, list(campaigns))) == len(campaigns)


async def _recorded(folder: Path, hook: str, count: int) -> list[dict[str, Any]]:
    """Wait until the plugins recorded `count` events of `hook` (they follow the commit)."""

    async def enough() -> bool:
        return len(events(folder, hook)) >= count

    await wait_for(enough)
    return events(folder, hook)


async def test_hook_dispatch_sent(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, recorder=RECORD_EVENTS)
    client = await make_client(replace(settings, plugins_dir=folder))
    campaign = await _schedule(
        client, auth(await new_token(store)), recipients=[f"r{i}@example.com" for i in range(4)]
    )
    await wait_for(lambda: _completed(store, campaign))
    await _recorded(folder, "campaign_completed", 1)
    rows = await store.pool.fetch("SELECT id, campaign_id, recipient, message_id FROM dispatches")
    expected = sorted(
        (r["id"], r["campaign_id"], r["recipient"], r["message_id"], "capture") for r in rows
    )
    received = sorted(
        (e["dispatch_id"], e["campaign_id"], e["recipient"], e["message_id"], e["transport"])
        for e in events(folder, "dispatch_sent")
    )
    assert received == expected
    captured = await store.pool.fetch("SELECT message_id FROM captured_messages")
    assert {r["message_id"] for r in captured} == {e[3] for e in received}
    # One process: the campaign's completion comes after its emails' own events.
    assert [e["hook"] for e in events(folder)][-1] == "campaign_completed"


async def test_hook_dispatch_failed(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, recorder=RECORD_EVENTS, picky=PICKY)
    client = await make_client(replace(settings, plugins_dir=folder))
    headers = auth(await new_token(store))
    sender = await _picky_sender(client, headers)
    recipients = ["gone@example.com", "ok@example.com"]
    campaign = await _schedule(client, headers, sender=sender, recipients=recipients)
    await wait_for(lambda: _completed(store, campaign))
    gone = await store.pool.fetchrow(
        "SELECT id, status, last_error FROM dispatches WHERE recipient = 'gone@example.com'"
    )
    assert gone is not None and gone["status"] == "failed"
    await _recorded(folder, "campaign_completed", 1)
    assert events(folder, "dispatch_failed") == [
        {
            "hook": "dispatch_failed",
            "dispatch_id": gone["id"],
            "campaign_id": campaign,
            "recipient": "gone@example.com",
            "error": gone["last_error"],
        }
    ]
    assert "550 5.1.1 <gone@example.com>: no such user" in gone["last_error"]
    assert [e["recipient"] for e in events(folder, "dispatch_sent")] == ["ok@example.com"]


async def test_hook_sender_limited(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, recorder=RECORD_EVENTS)
    paced = replace(settings, plugins_dir=folder, max_emails_per_hour=2, rate_window_seconds=3)
    client = await make_client(paced)
    campaign = await _schedule(
        client, auth(await new_token(store)), recipients=[f"l{i}@example.com" for i in range(5)]
    )
    await wait_for(lambda: _completed(store, campaign))
    sender_id = await store.pool.fetchval("SELECT sender_id FROM campaigns")
    limited = events(folder, "sender_limited")
    # Five emails at two per window span three windows: the sender is parked before the last
    # two for a whole window (the first parking may be too short to announce).
    assert len(limited) >= 1
    for event in limited:
        assert event["sender_id"] == sender_id
        assert event["reason"] == "hourly limit 2 reached"
        # Parked until the next window starts, plus at most 250 ms of jitter.
        assert event["resume_at_ms"] % 3000 <= 250, event


async def test_a_provider_saying_too_many_fires_sender_limited(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, recorder=RECORD_EVENTS, picky=PICKY)
    client = await make_client(replace(settings, plugins_dir=folder))
    headers = auth(await new_token(store))
    sender = await _picky_sender(client, headers)
    campaign = await _schedule(client, headers, sender=sender, recipients=["slow@example.com"])
    await wait_for(lambda: _completed(store, campaign))
    (limited,) = events(folder, "sender_limited")
    assert limited["sender_id"] == sender
    assert limited["reason"] == "421 4.7.0 too many messages, slow down"
    sent_at = await store.pool.fetchval("SELECT sent_at FROM dispatches")
    assert sent_at.timestamp() * 1000 >= limited["resume_at_ms"] - 50  # waited until then


async def test_hook_campaign_completed(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, recorder=RECORD_EVENTS)
    with_plugin = replace(settings, plugins_dir=folder)
    client = await make_client(with_plugin, roles={"api", "sweeper"})
    for _ in range(2):  # two worker processes' worth: the flip to completed happens once
        await make_client(with_plugin, roles={"worker"})
    ada = await new_token(store, "ada@example.com")
    eve = await new_token(store, "eve@example.com")
    first = await _schedule(client, auth(ada), recipients=[f"a{i}@example.com" for i in range(30)])
    second = await _schedule(client, auth(eve), recipients=["e@example.com"])
    cancelled = await _schedule(
        client, auth(eve), recipients=["later@example.com"], start_at="2099-01-01T00:00:00Z"
    )
    assert (await client.post(f"/api/campaigns/{cancelled}/cancel", headers=auth(eve))).ok
    await wait_for(lambda: _completed(store, first, second))
    owners = {
        r["id"]: r["owner_id"] for r in await store.pool.fetch("SELECT id, owner_id FROM campaigns")
    }
    completed = await _recorded(folder, "campaign_completed", 2)
    assert sorted((e["campaign_id"], e["owner_id"]) for e in completed) == [
        (first, owners[first]),
        (second, owners[second]),
    ]
    assert len(await _recorded(folder, "dispatch_sent", 31)) == 31


BOOM = """
@hookimpl
async def dispatch_sent(dispatch_id):
    raise RuntimeError(f"boom on {dispatch_id}")

@hookimpl
def campaign_completed(campaign_id):
    raise ValueError("boom")
"""


async def test_a_plugin_raising_in_an_event_hook_is_logged_and_loses_no_email(
    make_client: Start,
    settings: Settings,
    store: Store,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="dispatch_engine.plugins")
    folder = plugin_dir(tmp_path, boom=BOOM, recorder=RECORD_EVENTS)
    client = await make_client(replace(settings, plugins_dir=folder))
    campaign = await _schedule(
        client, auth(await new_token(store)), recipients=[f"b{i}@example.com" for i in range(6)]
    )
    await wait_for(lambda: _completed(store, campaign))
    statuses = await store.pool.fetch("SELECT status, count(*) FROM dispatches GROUP BY status")
    assert {r["status"]: r["count"] for r in statuses} == {"sent": 6}
    assert await store.pool.fetchval("SELECT sum(deliveries) FROM captured_messages") == 6
    assert await store.pool.fetchval("SELECT count(*) FROM ledger WHERE state = 'sent'") == 6

    async def all_logged() -> bool:
        return sum("raised in dispatch_sent" in r.getMessage() for r in caplog.records) == 6

    await wait_for(all_logged)
    messages = [r.getMessage() for r in caplog.records]
    assert "plugin boom raised in campaign_completed" in messages
    assert any("boom on" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
    # The other plugin still heard every event.
    assert len(await _recorded(folder, "campaign_completed", 1)) == 1
    assert len(events(folder, "dispatch_sent")) == 6


ONLY_FAILED = """
@hookimpl
def dispatch_failed(dispatch_id, campaign_id, recipient, error):
    record("dispatch_failed", recipient=recipient, error=error)

@hookimpl
def campaign_completed(campaign_id, owner_id):
    record("campaign_completed", campaign_id=campaign_id)
"""


async def test_a_plugin_hooking_only_failures_hears_only_failures(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    # No plugin implements dispatch_sent: a sent email must not reach dispatch_failed instead.
    folder = plugin_dir(tmp_path, only_failed=ONLY_FAILED, picky=PICKY)
    client = await make_client(replace(settings, plugins_dir=folder))
    headers = auth(await new_token(store))
    sender = await _picky_sender(client, headers)
    recipients = ["gone@example.com", "ok@example.com"]
    campaign = await _schedule(client, headers, sender=sender, recipients=recipients)
    await wait_for(lambda: _completed(store, campaign))
    await _recorded(folder, "campaign_completed", 1)
    assert [e["recipient"] for e in events(folder, "dispatch_failed")] == ["gone@example.com"]
