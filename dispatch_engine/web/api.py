"""The REST API under /api (JSON via orjson; errors from middleware.error_middleware)."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiohttp import web

from ..campaigns import ScheduleRequest, parse_schedule_request
from ..errors import ApiError
from ..models import DispatchStatus
from ..parsing import (
    decode_cursor,
    decode_id_cursor,
    encode_cursor,
    idempotency_key,
    row_id,
    whole_number,
)
from ..recipients import Limits
from ..waiting import campaign_wait_json, wait_of
from .bodies import json_object, multipart_fields, off_loop, upload_limits, utf8
from .events import publish
from .keys import CAMPAIGNS, PACER, QUEUE, SETTINGS, STORE
from .middleware import current_user, json_response

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _limit(request: web.Request) -> int:
    return whole_number(request.query.get("limit", "50"), "limit", minimum=1, maximum=500)


async def _read_schedule_body(request: web.Request) -> dict[str, Any]:
    """The schedule's fields: a JSON object, or multipart parts (a CSV upload stays bytes)."""
    if not request.content_type.startswith("multipart/"):
        return await json_object(request)
    return dict(await multipart_fields(request))


def _parse_schedule(data: dict[str, Any], now: datetime, limits: Limits) -> ScheduleRequest:
    """Multipart text fields decoded, then validated: all CPU work, run in a thread."""
    fields: dict[str, Any] = {}
    for name, value in data.items():
        if name == "recipients_file":  # an empty part: no file was chosen
            fields[name] = value or None
        elif not isinstance(value, bytes):
            fields[name] = value
        elif name == "recipients":  # a textarea of addresses, one a line
            fields[name] = [line for line in utf8(value, name).splitlines() if line.strip()]
        else:
            fields[name] = utf8(value, name)
    return parse_schedule_request(fields, now=now, limits=limits)


def _campaign_json(detail: dict[str, Any]) -> dict[str, Any]:
    counts = detail["counts"]
    total = detail["total"]
    done = counts["sent"] + counts["failed"] + counts["cancelled"]
    return {
        "id": detail["id"],
        "subject": detail["subject"],
        "status": detail["status"],
        "sender": {"id": detail["sender_id"], "from_address": detail["from_address"]},
        "start_at": _iso(detail["start_at"]),
        "delay_between_ms": detail["delay_between_ms"],
        "delay_jitter_ms": detail.get("delay_jitter_ms", 0),
        "hourly_limit": detail["hourly_limit"],
        "daily_limit": detail.get("daily_limit"),
        "total": total,
        "counts": counts,
        "progress": round(done / total, 4) if total else 1.0,
        "created_at": _iso(detail["created_at"]),
    }


@routes.post("/api/emails/schedule")
async def schedule(request: web.Request) -> web.Response:
    user = current_user(request)
    data = await _read_schedule_body(request)
    settings = request.app[SETTINGS]
    # A million recipients are seconds of CPU: parsed off the loop, which keeps serving.
    parsed = await off_loop(_parse_schedule, data, datetime.now(UTC), upload_limits(settings))
    store = request.app[STORE]
    sender = await store.ensure_default_sender(
        user, transport=settings.transport, hourly_limit=settings.max_emails_per_hour
    )
    result = await request.app[CAMPAIGNS].schedule(
        user,
        parsed,
        default_sender=sender,
        idempotency_header=idempotency_key(request.headers.get("Idempotency-Key")),
    )
    detail = await store.campaign_detail(user.id, result.campaign_id)
    assert detail is not None
    body = {
        "campaign": _campaign_json(detail),
        "accepted": detail["total"] if result.replayed else result.accepted,
        "rejected": result.rejected,
        "rejected_total": result.rejected_total,
    }
    if not result.replayed:  # live dashboards (web/events.py) show the new campaign at once
        await publish(
            request.app, {"type": "campaign", "id": result.campaign_id, "owner_id": user.id}
        )
    return json_response(body, 200 if result.replayed else 201)


@routes.get("/api/emails/scheduled")
async def scheduled(request: web.Request) -> web.Response:
    user, limit = current_user(request), _limit(request)
    rows = await request.app[STORE].list_scheduled(
        user.id, limit + 1, decode_cursor(request.query.get("cursor"))
    )
    now = datetime.now(UTC)
    items = []
    for r in rows[:limit]:
        reason, until = wait_of(r, now)
        items.append(
            {
                "id": r["id"],
                "email": r["recipient"],
                "subject": r["subject"],
                "scheduled_at": _iso(r["scheduled_at"]),
                "status": r["status"],
                "campaign_id": r["campaign_id"],
                "attempts": r["attempts"],
                "error": r["last_error"],
                "waiting": {"reason": reason, "until": _iso(until)} if reason else None,
            }
        )
    last = rows[limit - 1] if len(rows) > limit else None
    cursor = encode_cursor(last["scheduled_at"], last["id"]) if last else None
    return json_response({"items": items, "next_cursor": cursor})


@routes.get("/api/emails/sent")
async def sent(request: web.Request) -> web.Response:
    user, limit = current_user(request), _limit(request)
    rows = await request.app[STORE].list_finished(
        user.id, limit + 1, decode_cursor(request.query.get("cursor"))
    )
    items = [
        {
            "id": r["id"],
            "email": r["recipient"],
            "subject": r["subject"],
            "scheduled_at": _iso(r["scheduled_at"]),
            "sent_at": _iso(r["sent_at"]),
            "finished_at": _iso(r["finished_at"]),
            "status": r["status"],
            "campaign_id": r["campaign_id"],
            "message_id": r["message_id"],
            "attempts": r["attempts"],
            "error": r["last_error"],
            "response": r["response"],
            "preview_url": _preview_url(r["response"]),
        }
        for r in rows[:limit]
    ]
    last = rows[limit - 1] if len(rows) > limit else None
    cursor = encode_cursor(last["finished_at"], last["id"]) if last else None
    return json_response({"items": items, "next_cursor": cursor})


def _preview_url(response: str | None) -> str | None:
    """A transport may leave a preview link in its reply (the SMTP one does for Ethereal)."""
    match = re.search(r"preview: (https://\S+)", response or "")
    return match.group(1) if match else None


def _path_id(request: web.Request, name: str = "id") -> int:
    return row_id(request.match_info[name], name)


@routes.get("/api/campaigns/{id}")
async def campaign(request: web.Request) -> web.Response:
    user = current_user(request)
    store = request.app[STORE]
    detail = await store.campaign_detail(user.id, _path_id(request))
    if detail is None:
        raise ApiError(404, "not_found", "no such campaign")
    wait = await campaign_wait_json(
        store, request.app[QUEUE], request.app[SETTINGS], user.id, detail
    )
    return json_response(_campaign_json(detail) | wait)


@routes.get("/api/campaigns")
async def campaigns(request: web.Request) -> web.Response:
    user, limit = current_user(request), _limit(request)
    before = decode_id_cursor(request.query.get("cursor"))
    rows = await request.app[STORE].list_campaigns(user.id, limit + 1, before)
    items = [
        {
            "id": r["id"],
            "subject": r["subject"],
            "status": r["status"],
            "total": r["total"],
            "sender": {"id": r["sender_id"], "from_address": r["from_address"]},
            "start_at": _iso(r["start_at"]),
            "created_at": _iso(r["created_at"]),
            "counts": {
                status.value: (r["counts"] or {}).get(status.value, 0) for status in DispatchStatus
            },
        }
        for r in rows[:limit]
    ]
    cursor = str(rows[limit - 1]["id"]) if len(rows) > limit else None
    return json_response({"items": items, "next_cursor": cursor})


async def _control(request: web.Request, action: str) -> web.Response:
    user = current_user(request)
    campaign_id = _path_id(request)
    service = request.app[CAMPAIGNS]
    affected: int | None = None
    if action == "pause":
        await service.pause(user, campaign_id)
    elif action == "resume":
        await service.resume(user, campaign_id)
    elif action == "cancel":
        affected = await service.cancel(user, campaign_id)
    else:
        affected = await service.retry_failed(user, campaign_id)
    detail = await request.app[STORE].campaign_detail(user.id, campaign_id)
    assert detail is not None
    body = _campaign_json(detail)
    await publish(request.app, {"type": "campaign", "id": campaign_id, "owner_id": user.id})
    return json_response({"campaign": body, "affected": affected})


@routes.post("/api/campaigns/{id}/pause")
async def pause(request: web.Request) -> web.Response:
    return await _control(request, "pause")


@routes.post("/api/campaigns/{id}/resume")
async def resume(request: web.Request) -> web.Response:
    return await _control(request, "resume")


@routes.post("/api/campaigns/{id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    return await _control(request, "cancel")


@routes.post("/api/campaigns/{id}/retry-failed")
async def retry_failed(request: web.Request) -> web.Response:
    return await _control(request, "retry-failed")


@routes.get("/api/inbox")
async def inbox(request: web.Request) -> web.Response:
    user, limit = current_user(request), _limit(request)
    before = decode_id_cursor(request.query.get("cursor"))
    rows = await request.app[STORE].list_inbox(user.id, limit + 1, before)
    items = [
        {
            "id": r["id"],
            "dispatch_id": r["dispatch_id"],
            "message_id": r["message_id"],
            "from": r["mail_from"],
            "to": list(r["recipients"]),
            "subject": r["subject"],
            "received_at": _iso(r["received_at"]),
            "deliveries": r["deliveries"],
        }
        for r in rows[:limit]
    ]
    cursor = str(rows[limit - 1]["id"]) if len(rows) > limit else None
    return json_response({"items": items, "next_cursor": cursor})


@routes.get("/api/inbox/{id}")
async def inbox_message(request: web.Request) -> web.Response:
    user = current_user(request)
    row = await request.app[STORE].inbox_message(user.id, _path_id(request))
    if row is None:
        raise ApiError(404, "not_found", "no such message")
    parsed = message_from_bytes(row["raw"], policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    text = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    return json_response(
        {
            "id": row["id"],
            "dispatch_id": row["dispatch_id"],
            "message_id": row["message_id"],
            "from": row["mail_from"],
            "to": list(row["recipients"]),
            "subject": row["subject"],
            "received_at": _iso(row["received_at"]),
            "deliveries": row["deliveries"],
            "headers": [[k, str(v)] for k, v in parsed.items()],
            "text": text.get_content() if isinstance(text, EmailMessage) else None,
            "html": html.get_content() if isinstance(html, EmailMessage) else None,
            "raw": row["raw"].decode("utf-8", "replace"),
        }
    )


@routes.get("/api/stats")
async def stats(request: web.Request) -> web.Response:
    """Per sender: its pace, what it sent this window, its backlog, whether it is parked."""
    user = current_user(request)
    store, queue, pacer = request.app[STORE], request.app[QUEUE], request.app[PACER]
    settings = request.app[SETTINGS]
    senders = []
    for sender in await store.senders_of(user.id):
        state = await queue.sender_state(sender.id)
        now_ms = state["now_ms"] or 0
        next_due = state["next_due_ms"]
        senders.append(
            {
                "id": sender.id,
                "from_address": sender.from_address,
                "hourly_limit": sender.hourly_limit,
                "min_gap_ms": sender.min_gap_ms,
                "delay_jitter_ms": sender.delay_jitter_ms,
                "daily_limit": sender.daily_limit,
                "window_seconds": settings.rate_window_seconds,
                "day_seconds": settings.day_seconds,
                "sent_this_window": await pacer.usage(sender.id, now_ms),
                "sent_today": await pacer.today(sender.id, now_ms),
                "queue_depth": state["queue_depth"],
                # A sender parked for its account waits until fixed: no "until" then.
                "parked_until": None if sender.parked_reason else _iso_ms(state["parked_until_ms"]),
                "parked_reason": sender.parked_reason,
                "due_lag_ms": max(0, now_ms - next_due) if next_due is not None else 0,
            }
        )
    counts = await store.status_counts(user.id)
    return json_response({"senders": senders, "dispatches": counts})


def _iso_ms(ms: int | None) -> str | None:
    return _iso(datetime.fromtimestamp(ms / 1000, UTC)) if ms is not None else None


@routes.get("/api/me")
async def me(request: web.Request) -> web.Response:
    user = current_user(request)
    return json_response(
        {"id": user.id, "email": user.email, "name": user.name, "avatar_url": user.avatar_url}
    )
