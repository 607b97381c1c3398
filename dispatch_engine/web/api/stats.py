"""`GET /api/stats`: each sender's pace and backlog, and the user's emails by status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from ..app_keys import PACER, QUEUE, SETTINGS, STORE
from ..middleware import current_user
from ..presenters import sender_feedback_json, sender_stats_json
from ..responses import json_response

routes = web.RouteTableDef()
FEEDBACK_DAYS = 30  # a sender's bounce and complaint rates look this far back


@routes.get("/api/stats")
async def stats(request: web.Request) -> web.Response:
    """Per sender: its pace, what it sent this window, its backlog, whether it is parked."""
    user = current_user(request)
    store, queue, pacer = request.app[STORE], request.app[QUEUE], request.app[PACER]
    settings = request.app[SETTINGS]
    senders = []
    since = datetime.now(UTC) - timedelta(days=FEEDBACK_DAYS)
    feedback = await store.sender_feedback(user.id, since)
    for sender in await store.senders_of(user.id):
        state = await queue.sender_state(sender.id)
        now_ms = state["now_ms"] or 0
        window = await pacer.usage(sender.id, now_ms)
        today = await pacer.today(sender.id, now_ms)
        senders.append(
            sender_stats_json(sender, state, settings, window=window, today=today)
            | {"feedback": sender_feedback_json(feedback.get(sender.id), FEEDBACK_DAYS)}
        )
    counts = await store.status_counts(user.id)
    return json_response({"senders": senders, "dispatches": counts})
