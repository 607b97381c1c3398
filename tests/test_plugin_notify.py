"""The notify plugin posting to a real Slack-style receiver on loopback from a running app."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import pytest

from dispatch_engine.builtins import notify
from dispatch_engine.config import Settings, SettingsError, load_settings
from dispatch_engine.plugin import settings_of
from dispatch_engine.plugins import get_plugin_manager
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.http_receiver import Received, Receiver


def _texts(receiver: Receiver) -> list[str]:
    return [str(r.json()["text"]) for r in receiver.requests]


async def test_notify_posts_when_a_sender_is_limited_and_a_campaign_completes(
    make_client: Start, settings: Settings, store: Store
) -> None:
    hold = asyncio.Event()  # the receiver answers nothing until the campaign is done
    async with Receiver(hold=hold) as receiver:
        url = f"{receiver.url}/services/T000/B000/XXXX"
        configured = replace(
            settings,
            max_emails_per_hour=2,
            rate_window_seconds=2,
            base_url="https://dispatch.example.com",
        ).with_environ(DISPATCH_NOTIFY_WEBHOOK_URL=url)
        client = await make_client(configured)
        headers = auth(await new_token(store))
        payload = {
            "subject": "s",
            "body": "b",
            "recipients": [f"n{i}@example.com" for i in range(5)],
        }
        response = await client.post("/api/emails/schedule", json=payload, headers=headers)
        assert response.status == 201
        campaign = (await response.json())["campaign"]["id"]
        sender = (await response.json())["campaign"]["sender"]["id"]

        async def announced() -> bool:
            return any("completed" in text for text in _texts(receiver))

        # A receiver that never answers does not hold sending up: the campaign completes.
        await wait_for(announced)
        assert await store.pool.fetchval("SELECT status FROM campaigns") == "completed"
        hold.set()
        limited = [t for t in _texts(receiver) if "limited" in t]
        completed = [t for t in _texts(receiver) if "completed" in t]
        assert len(limited) == 1, _texts(receiver)  # however often it was parked meanwhile
        assert re.fullmatch(
            rf":hourglass: Sender {sender} is limited \(hourly limit 2 reached\); it sends again "
            r"from \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\.",
            limited[0],
        ), limited[0]
        assert completed == [
            f":white_check_mark: Campaign {campaign} completed: "
            f"https://dispatch.example.com/campaigns/{campaign}"
        ]
        for request in receiver.requests:
            assert request.path == "/services/T000/B000/XXXX"
            assert request.headers["Content-Type"].startswith("application/json")


async def test_a_sender_limited_again_soon_is_announced_once(settings: Settings) -> None:
    async with Receiver() as receiver:
        configured = settings.with_environ(DISPATCH_NOTIFY_WEBHOOK_URL=f"{receiver.url}/hook")
        for sender_id in (41, 41, 42):
            notify.sender_limited(
                sender_id, 1_700_000_000_000, "hourly limit 5 reached", configured
            )
        await notify.shutdown(configured, None)  # waits for the posts in flight
        received: list[Received] = receiver.requests
        assert [r.json()["text"].split(" is ")[0] for r in received] == [
            ":hourglass: Sender 41",
            ":hourglass: Sender 42",
        ]
        assert "2023-11-14 22:13:20 UTC" in received[0].json()["text"]


def test_the_notify_url_is_validated_and_kept_out_of_logs() -> None:
    with pytest.raises(SettingsError, match="DISPATCH_NOTIFY_WEBHOOK_URL must be a URL"):
        get_plugin_manager(
            load_settings({"DISPATCH_NOTIFY_WEBHOOK_URL": "hooks.slack.com/services/x"})
        )  # at start, when the plugins load
    secret = "https://hooks.slack.com/services/T0/B0/secret-part"
    settings = load_settings({"DISPATCH_NOTIFY_WEBHOOK_URL": secret})
    own = settings_of(notify.NotifySettings, settings)
    assert own.webhook_url == secret and "secret-part" not in repr(settings) + repr(own)


async def test_notify_posts_a_parked_sender_with_its_reason(settings: Settings) -> None:
    async with Receiver() as receiver:
        configured = settings.with_environ(DISPATCH_NOTIFY_WEBHOOK_URL=f"{receiver.url}/hook")
        reason = "the server refused the login of 'ops': 535 5.7.8 Authentication failed"
        notify.sender_parked(7, reason, configured)
        await notify.shutdown(configured, None)  # waits for the post in flight
        (text,) = _texts(receiver)
        assert text.startswith(f":no_entry: Sender 7 is parked: {reason}.")
        assert "/api/senders/7/resume" in text
