"""The user's emails over the API: the queued ones (with why each waits), the finished ones;
both filtered by status, campaign, sender and address (web/email_filters.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from ..app_keys import STORE
from ..email_filters import read_filters
from ..middleware import current_user
from ..paging import api_limit, decode_cursor, time_cursor_after
from ..presenters import listing, scheduled_json, sent_json
from ..responses import json_response

routes = web.RouteTableDef()


@routes.get("/api/emails/scheduled")
async def scheduled(request: web.Request) -> web.Response:
    """`?status=&campaign_id=&sender_id=&q=` filter it (q: a part of the address, any case)."""
    user, limit = current_user(request), api_limit(request)
    match = read_filters(request.query, "scheduled").match("scheduled")
    rows = await request.app[STORE].list_scheduled(
        user.id, limit + 1, decode_cursor(request.query.get("cursor")), match
    )
    now = datetime.now(UTC)
    items = [scheduled_json(r, now) for r in rows[:limit]]
    return json_response(listing(items, time_cursor_after(rows, limit, "scheduled_at")))


@routes.get("/api/emails/sent")
async def sent(request: web.Request) -> web.Response:
    """Filtered as the scheduled list, over the finished statuses."""
    user, limit = current_user(request), api_limit(request)
    match = read_filters(request.query, "sent").match("sent")
    rows = await request.app[STORE].list_finished(
        user.id, limit + 1, decode_cursor(request.query.get("cursor")), match
    )
    items = [sent_json(r) for r in rows[:limit]]
    return json_response(listing(items, time_cursor_after(rows, limit, "finished_at")))
