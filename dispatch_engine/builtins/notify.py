"""Notify: a message to a Slack-compatible incoming webhook when a sender is limited or
parked (its server keeps refusing its account), a campaign completes or pauses itself (its
bounce or complaint rate), an email bounces or draws a complaint, or a reply arrives.

Set `DISPATCH_NOTIFY_WEBHOOK_URL` (Slack, Mattermost, Rocket.Chat, Discord's `/slack` URL:
anything that takes `{"text": …}`); unset, the plugin does nothing. Posts run in background
tasks, so a slow or broken receiver never slows sending; a failed post is logged. A sender
that stays limited is announced at most once per `QUIET_S` per worker process; so are the
bounces (hard, soft) and complaints of one campaign, the next message counting those held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from dispatch_engine.plugin import Settings, hookimpl, setting, settings_of, url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NotifySettings:
    webhook_url: str | None = setting(
        "DISPATCH_NOTIFY_WEBHOOK_URL",
        None,
        url("http", "https"),
        "a Slack-compatible incoming webhook the notify plugin posts to",
        secret=True,  # its path is the webhook's secret
    )


SETTINGS = NotifySettings  # checked when the process starts
QUIET_S = 600.0
TIMEOUT = aiohttp.ClientTimeout(total=10)
_pending: set[asyncio.Task[None]] = set()
_last_limited: dict[tuple[str, int], float] = {}
_last_feedback: dict[tuple[str, str, int], tuple[float, int]] = {}  # (last post, held since)


async def _post(url: str, text: str) -> None:
    try:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.post(url, json={"text": text}) as response,
        ):
            if response.status >= 300:
                answer = (await response.text(errors="replace"))[:200]
                log.warning("notify webhook answered %s %s", response.status, answer)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("notify webhook unreachable: %s: %s", type(exc).__name__, exc)


def _post_later(settings: Settings, text: str) -> None:
    webhook_url = settings_of(NotifySettings, settings).webhook_url
    if webhook_url is None:
        return
    task = asyncio.get_running_loop().create_task(_post(webhook_url, text))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


@hookimpl
def sender_limited(sender_id: int, resume_at_ms: int, reason: str, settings: Settings) -> None:
    key = (settings_of(NotifySettings, settings).webhook_url or "", sender_id)
    now = time.monotonic()
    if key in _last_limited and now - _last_limited[key] < QUIET_S:
        return
    _last_limited[key] = now
    resume = datetime.fromtimestamp(resume_at_ms / 1000, UTC)
    _post_later(
        settings,
        f":hourglass: Sender {sender_id} is limited ({reason}); "
        f"it sends again from {resume:%Y-%m-%d %H:%M:%S} UTC.",
    )


@hookimpl
def sender_parked(sender_id: int, reason: str, settings: Settings) -> None:
    _post_later(
        settings,
        f":no_entry: Sender {sender_id} is parked: {reason}. Its emails wait until its "
        f"settings are fixed or it is resumed (POST /api/senders/{sender_id}/resume).",
    )


@hookimpl
def campaign_completed(campaign_id: int, owner_id: int, settings: Settings) -> None:
    _post_later(
        settings,
        f":white_check_mark: Campaign {campaign_id} completed: "
        f"{settings.public_url}/campaigns/{campaign_id}",
    )


@hookimpl
def campaign_paused(campaign_id: int, owner_id: int, reason: str, settings: Settings) -> None:
    _post_later(
        settings,
        f":octagonal_sign: Campaign {campaign_id} paused itself: {reason}. Its other emails "
        f"wait until it is resumed: {settings.public_url}/campaigns/{campaign_id}",
    )


def _quietly(settings: Settings, what: str, campaign_id: int) -> int | None:
    """How many events of this kind and campaign this post stands for (the ones held back
    in the quiet time, and itself); None: within the quiet time, held back and counted."""
    key = (settings_of(NotifySettings, settings).webhook_url or "", what, campaign_id)
    now = time.monotonic()
    last, held = _last_feedback.get(key, (None, 0))
    if last is not None and now - last < QUIET_S:
        _last_feedback[key] = (last, held + 1)
        return None
    if len(_last_feedback) > 10_000:  # campaigns long quiet: forget them
        for stale in [k for k, (at, _) in _last_feedback.items() if now - at >= QUIET_S]:
            del _last_feedback[stale]
    _last_feedback[key] = (now, 0)
    return held + 1


@hookimpl
def dispatch_bounced(
    dispatch_id: int, campaign_id: int, recipient: str, kind: str, detail: str, settings: Settings
) -> None:
    count = _quietly(settings, f"bounce:{kind}", campaign_id)
    if count is not None:
        more = f" ({count} {kind} bounces since the last message)" if count > 1 else ""
        _post_later(
            settings,
            f":leftwards_arrow_with_hook: A {kind} bounce in campaign {campaign_id}{more}: "
            f"{recipient}: {detail}",
        )


@hookimpl
def dispatch_complained(
    dispatch_id: int, campaign_id: int, recipient: str, detail: str, settings: Settings
) -> None:
    count = _quietly(settings, "complaint", campaign_id)
    if count is not None:
        more = f" ({count} complaints since the last message)" if count > 1 else ""
        _post_later(
            settings,
            f":warning: {recipient} reported an email of campaign {campaign_id} as spam{more}",
        )


@hookimpl
def reply_received(
    campaign_id: int, from_address: str, snippet: str, settings: Settings
) -> None:  # docs/replies.md
    # Written by anyone who can mail the sender: escaped, so it cannot ping @channel.
    said = snippet.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    author = from_address.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    _post_later(
        settings,
        f":speech_balloon: Reply from {author} to campaign {campaign_id}: {said} "
        f"{settings.public_url}/campaigns/{campaign_id}",
    )


@hookimpl
async def shutdown(settings: Settings, app: Any) -> None:
    """Let posts in flight finish (briefly) before the process stops."""
    loop = asyncio.get_running_loop()
    mine = [task for task in _pending if task.get_loop() is loop]
    if mine:
        await asyncio.wait(mine, timeout=TIMEOUT.total)
