"""Campaigns over the API: schedule one, read them, and pause, resume, cancel or retry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ...campaigns import ScheduleRequest, ScheduleResult, parse_schedule_request
from ...errors import NotFound
from ...models import User
from ...parsing import idempotency_key
from ...pools.present import add_today
from ...recipients import Limits
from ...waiting import campaign_wait
from ..app_keys import CAMPAIGNS, QUEUE, SETTINGS, STORE
from ..bodies import json_object, multipart_fields, off_loop, upload_limits, utf8
from ..events import publish
from ..middleware import current_user
from ..paging import api_limit, decode_id_cursor, id_cursor_after
from ..params import path_id
from ..presenters import campaign_item_json, campaign_json, listing, wait_json
from ..responses import created, json_response

routes = web.RouteTableDef()


async def _read_schedule_body(request: web.Request) -> dict[str, Any]:
    """The schedule's fields: a JSON object, or multipart parts (a CSV upload stays bytes)."""
    if not request.content_type.startswith("multipart/"):
        return await json_object(request)
    return dict(await multipart_fields(request))


def _parse_schedule(
    data: dict[str, Any], now: datetime, limits: Limits, *, from_body: bool
) -> ScheduleRequest:
    """The API body's fields decoded (multipart parts are bytes), then validated: all CPU
    work, run in a thread. The compose page's form fields come decoded already."""
    if not from_body:
        return parse_schedule_request(data, now=now, limits=limits)
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


async def schedule_campaign(
    request: web.Request,
    user: User,
    fields: dict[str, Any],
    idempotency: str | None = None,
    *,
    from_body: bool = False,
) -> ScheduleResult:
    """Validate and schedule (the API's and the compose page's way); live pages hear of it.

    `idempotency` is the raw Idempotency-Key header, checked after the fields; `from_body`:
    the fields are the API body's (`_read_schedule_body`), still to decode.
    """
    limits = upload_limits(request.app[SETTINGS])
    # A million recipients are seconds of CPU: parsed off the loop, which keeps serving.
    parsed = await off_loop(_parse_schedule, fields, datetime.now(UTC), limits, from_body=from_body)
    result = await request.app[CAMPAIGNS].schedule(
        user, parsed, idempotency_header=idempotency_key(idempotency)
    )
    if not result.replayed:  # live dashboards (web/events.py) show the new campaign at once
        await publish(
            request.app, {"type": "campaign", "id": result.campaign_id, "owner_id": user.id}
        )
    return result


@routes.post("/api/emails/schedule")
async def schedule(request: web.Request) -> web.Response:
    user = current_user(request)
    data = await _read_schedule_body(request)
    header = request.headers.get("Idempotency-Key")
    result = await schedule_campaign(request, user, data, header, from_body=True)
    detail = await request.app[STORE].campaign_detail(user.id, result.campaign_id)
    assert detail is not None
    body = {
        "campaign": campaign_json(detail),
        "accepted": detail["total"] if result.replayed else result.accepted,
        "rejected": result.rejected,
        "rejected_total": result.rejected_total,
        "suppressed_total": result.suppressed,
    }
    if result.replayed:
        return json_response(body)
    return created(body, f"/api/campaigns/{result.campaign_id}")


@routes.get("/api/campaigns/{id}")
async def campaign(request: web.Request) -> web.Response:
    user = current_user(request)
    store = request.app[STORE]
    detail = await store.campaign_detail(user.id, path_id(request))
    if detail is None:
        raise NotFound("no such campaign")
    wait = await campaign_wait(store, request.app[QUEUE], request.app[SETTINGS], user.id, detail)
    await add_today(detail["pool"], store, request.app[QUEUE], request.app[SETTINGS].day_seconds)
    return json_response(campaign_json(detail) | wait_json(wait))


@routes.get("/api/campaigns")
async def campaigns(request: web.Request) -> web.Response:
    user, limit = current_user(request), api_limit(request)
    before = decode_id_cursor(request.query.get("cursor"))
    rows = await request.app[STORE].list_campaigns(user.id, limit + 1, before)
    items = [campaign_item_json(r) for r in rows[:limit]]
    return json_response(listing(items, id_cursor_after(rows, limit)))


async def _control(request: web.Request, action: str) -> web.Response:
    user = current_user(request)
    campaign_id = path_id(request)
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
    body = campaign_json(detail)
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
