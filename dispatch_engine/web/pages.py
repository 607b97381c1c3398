"""The dashboard's pages: emails (Scheduled and Sent), campaigns, the capture inbox.

Server-rendered and complete without JavaScript (pagination is links, times are UTC); the
page script adds local times and live refreshes of each page's live region. Every query is
scoped to the signed-in user.
"""

from __future__ import annotations

from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiohttp import web

from ..errors import ApiError
from ..models import Sender
from ..parsing import decode_cursor, decode_id_cursor, encode_cursor, row_id
from ..waiting import campaign_wait_json
from .compose import sanitize_html
from .keys import QUEUE, SETTINGS, STORE
from .middleware import current_user
from .views import render

routes = web.RouteTableDef()
PAGE_SIZE = 25


def _cursor(value: str | None) -> tuple[datetime, int] | None:
    try:
        return decode_cursor(value)
    except ApiError:
        return None  # a stale or edited link shows the first page


def _id_cursor(value: str | None) -> int | None:
    try:
        return decode_id_cursor(value)
    except ApiError:
        return None


def _path_id(request: web.Request) -> int:
    try:
        return row_id(request.match_info["id"])
    except ApiError:
        raise web.HTTPNotFound() from None


def progress(counts: dict[str, int], total: int) -> dict[str, Any]:
    done = sum(counts.get(s, 0) for s in ("sent", "failed", "cancelled"))
    return {"done": done, "total": total, "percent": round(100 * done / total) if total else 100}


@routes.get("/")
async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/emails")


@routes.get("/emails")
async def emails(request: web.Request) -> web.Response:
    user, store = current_user(request), request.app[STORE]
    q = request.query
    after = _cursor(q.get("scheduled_cursor"))
    before = _cursor(q.get("sent_cursor"))
    scheduled = await store.list_scheduled(user.id, PAGE_SIZE + 1, after)
    finished = await store.list_finished(user.id, PAGE_SIZE + 1, before)
    more_scheduled = scheduled[PAGE_SIZE - 1] if len(scheduled) > PAGE_SIZE else None
    more_sent = finished[PAGE_SIZE - 1] if len(finished) > PAGE_SIZE else None
    flash = None
    scheduled_id = _id_cursor(q.get("scheduled"))  # the campaign just scheduled
    if scheduled_id is not None:
        flash = await store.campaign_detail(user.id, scheduled_id)
    context = {
        "title": "Emails",
        "scheduled": scheduled[:PAGE_SIZE],
        "sent": finished[:PAGE_SIZE],
        "scheduled_next": encode_cursor(more_scheduled["scheduled_at"], more_scheduled["id"])
        if more_scheduled
        else None,
        "sent_next": encode_cursor(more_sent["finished_at"], more_sent["id"])
        if more_sent
        else None,
        "paged": bool(after or before),
        "query": dict(q),
        "flash": flash,
    }
    return render(request, "emails.html", context, partial="_emails_live.html")


@routes.get("/campaigns")
async def campaigns(request: web.Request) -> web.Response:
    user = current_user(request)
    before = _id_cursor(request.query.get("cursor"))
    rows = await request.app[STORE].list_campaigns(user.id, PAGE_SIZE + 1, before)
    items = [
        {
            **dict(r),
            "counts": r["counts"] or {},
            "progress": progress(r["counts"] or {}, r["total"]),
        }
        for r in rows[:PAGE_SIZE]
    ]
    context = {
        "title": "Campaigns",
        "campaigns": items,
        "next_cursor": rows[PAGE_SIZE - 1]["id"] if len(rows) > PAGE_SIZE else None,
        "paged": before is not None,
    }
    return render(request, "campaigns.html", context, partial="_campaigns_live.html")


async def _pacing(request: web.Request, sender: Sender) -> dict[str, Any] | None:
    """The sender's state in the queue: queued ids, and when it may send next."""
    try:
        state = await request.app[QUEUE].sender_state(sender.id)
    except Exception:  # the page still shows everything PostgreSQL knows
        return None
    now, due = state["now_ms"] or 0, state["next_due_ms"]
    return {
        "queued": state["queue_depth"],
        "next_ms": due if due is not None and due > now else None,
        "parked_ms": state["parked_until_ms"],
    }


@routes.get("/campaigns/{id}")
async def campaign(request: web.Request) -> web.Response:
    user, store = current_user(request), request.app[STORE]
    detail = await store.campaign_detail(user.id, _path_id(request))
    if detail is None:
        raise web.HTTPNotFound()
    sender = await store.find_sender(user.id, detail["sender_id"])
    limit = detail["hourly_limit"]
    context = {
        "title": detail["subject"],
        "campaign": detail,
        "progress": progress(detail["counts"], detail["total"]),
        "sender": sender,
        "pacing": await _pacing(request, sender) if sender else None,
        "hourly_limit": min(limit, sender.hourly_limit) if limit and sender else limit,
        "gap_ms": max(detail["delay_between_ms"], sender.min_gap_ms if sender else 0),
        "wait": await campaign_wait_json(
            store, request.app[QUEUE], request.app[SETTINGS], user.id, detail
        ),
    }
    return render(request, "campaign.html", context, partial="_campaign_live.html")


@routes.get("/inbox")
async def inbox(request: web.Request) -> web.Response:
    user = current_user(request)
    before = _id_cursor(request.query.get("cursor"))
    rows = await request.app[STORE].list_inbox(user.id, PAGE_SIZE + 1, before)
    context = {
        "title": "Inbox",
        "messages": rows[:PAGE_SIZE],
        "next_cursor": rows[PAGE_SIZE - 1]["id"] if len(rows) > PAGE_SIZE else None,
        "paged": before is not None,
    }
    return render(request, "inbox.html", context, partial="_inbox_live.html")


@routes.get("/inbox/{id}")
async def inbox_message(request: web.Request) -> web.Response:
    user = current_user(request)
    row = await request.app[STORE].inbox_message(user.id, _path_id(request))
    if row is None:
        raise web.HTTPNotFound()
    parsed = message_from_bytes(row["raw"], policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    text = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    context = {
        "title": row["subject"] or "(no subject)",
        "message": row,
        "headers": [(k, str(v)) for k, v in parsed.items()],
        "text": text.get_content() if isinstance(text, EmailMessage) else None,
        "html": sanitize_html(html.get_content()) if isinstance(html, EmailMessage) else None,
        "raw": row["raw"].decode("utf-8", "replace"),
    }
    return render(request, "message.html", context)
