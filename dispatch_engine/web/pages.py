"""The dashboard's pages: campaigns, the capture inbox (the Emails page is email_pages.py).

Server-rendered and complete without JavaScript (pagination is links, times are UTC); the
page script adds local times and live refreshes of each page's live region. Every query is
scoped to the signed-in user.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..errors import ValidationError
from ..models import Sender
from ..pools.present import add_today, pool_json
from ..waiting import campaign_pace, campaign_wait
from .app_keys import QUEUE, SETTINGS, STORE
from .middleware import current_user
from .page_views import pace_view, progress
from .paging import decode_id_cursor, id_cursor_after, lenient
from .params import path_id
from .presenters import (
    campaign_row_view,
    message_parts,
    pacing_view,
    reply_json,
    sanitize_html,
    wait_json,
)
from .templating import render

routes = web.RouteTableDef()
PAGE_SIZE = 25
REPLIES_SHOWN = 20  # the latest replies on a campaign page; the API pages through all


def _path_id(request: web.Request) -> int:
    try:
        return path_id(request)
    except ValidationError:
        raise web.HTTPNotFound() from None


@routes.get("/")
async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/emails")


@routes.get("/campaigns")
async def campaigns(request: web.Request) -> web.Response:
    user = current_user(request)
    before = lenient(decode_id_cursor, request.query.get("cursor"))
    rows = await request.app[STORE].list_campaigns(user.id, PAGE_SIZE + 1, before)
    context = {
        "title": "Campaigns",
        "campaigns": [campaign_row_view(r) for r in rows[:PAGE_SIZE]],
        "next_cursor": id_cursor_after(rows, PAGE_SIZE),
        "paged": before is not None,
    }
    return render(request, "campaigns.html", context, partial="_campaigns_live.html")


async def _pacing(request: web.Request, sender: Sender) -> dict[str, Any] | None:
    """The sender's state in the queue: queued ids, and when it may send next."""
    try:
        state = await request.app[QUEUE].sender_state(sender.id)
    except Exception:  # the page still shows everything PostgreSQL knows
        return None
    return pacing_view(state)


@routes.get("/campaigns/{id}")
async def campaign(request: web.Request) -> web.Response:
    user, store = current_user(request), request.app[STORE]
    detail = await store.campaign_detail(user.id, _path_id(request))
    if detail is None:
        raise web.HTTPNotFound()
    sender = await store.find_sender(user.id, detail["sender_id"])
    await add_today(detail["pool"], store, request.app[QUEUE], request.app[SETTINGS].day_seconds)
    limit, settings = detail["hourly_limit"], request.app[SETTINGS]
    context = {
        "title": detail["name"] or detail["first_subject"] or detail["subject"],
        "campaign": detail,
        "progress": progress(detail["counts"], detail.get("emails") or detail["total"]),
        "sender": sender,
        "pool": pool_json(detail.get("pool") or []),  # its senders, if several (pools/)
        "pacing": await _pacing(request, sender) if sender else None,
        "hourly_limit": min(limit, sender.hourly_limit) if limit and sender else limit,
        "gap_ms": max(detail["delay_between_ms"], sender.min_gap_ms if sender else 0),
        "pace": pace_view(campaign_pace(detail, sender, settings, datetime.now(UTC)), settings),
        "wait": wait_json(
            await campaign_wait(store, request.app[QUEUE], settings, user.id, detail)
        ),
        # A sequence's first recipients, each with a Stop button (_sequence.html).
        "members": await store.list_members(detail["id"], 20, None, None)
        if detail["sequence"]
        else [],
    }
    replies = await store.campaign_replies(user.id, detail["id"], "reply", REPLIES_SHOWN + 1, None)
    context |= {  # docs/replies.md
        "replies": [reply_json(r) for r in replies[:REPLIES_SHOWN]],
        "more_replies": len(replies) > REPLIES_SHOWN,
        "reads_replies": bool(sender and sender.reply_mailbox),
    }
    return render(request, "campaign.html", context, partial="_campaign_live.html")


@routes.get("/inbox")
async def inbox(request: web.Request) -> web.Response:
    user = current_user(request)
    before = lenient(decode_id_cursor, request.query.get("cursor"))
    rows = await request.app[STORE].list_inbox(user.id, PAGE_SIZE + 1, before)
    context = {
        "title": "Inbox",
        "messages": rows[:PAGE_SIZE],
        "next_cursor": id_cursor_after(rows, PAGE_SIZE),
        "paged": before is not None,
    }
    return render(request, "inbox.html", context, partial="_inbox_live.html")


@routes.get("/inbox/{id}")
async def inbox_message(request: web.Request) -> web.Response:
    user = current_user(request)
    row = await request.app[STORE].inbox_message(user.id, _path_id(request))
    if row is None:
        raise web.HTTPNotFound()
    parts = message_parts(row["raw"])
    context = {
        "title": row["subject"] or "(no subject)",
        "message": row,
        "headers": parts.headers,
        "text": parts.text,
        "html": sanitize_html(parts.html) if parts.html is not None else None,
        "raw": row["raw"].decode("utf-8", "replace"),
    }
    return render(request, "message.html", context)
