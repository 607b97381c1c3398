"""The senders API: sending identities with their own account, transport and limits."""

from __future__ import annotations

from aiohttp import web

from ...errors import ValidationError
from ...secretbox import secret_box
from ...transport import TransportRegistry
from ..app_keys import POOL, SENDERS, SETTINGS
from ..bodies import json_object
from ..middleware import current_user
from ..params import path_id, query_flag
from ..presenters import sender_json
from ..responses import created, json_response

routes = web.RouteTableDef()


@routes.get("/api/senders")
async def list_senders(request: web.Request) -> web.Response:
    senders = await request.app[SENDERS].store.senders_of(current_user(request).id)
    return json_response({"items": [sender_json(s) for s in senders]})


@routes.post("/api/senders")
async def create_sender(request: web.Request) -> web.Response:
    limit = request.app[SETTINGS].max_emails_per_hour
    sender = await request.app[SENDERS].create(
        current_user(request), await json_object(request), limit
    )
    return created(sender_json(sender), f"/api/senders/{sender.id}")


@routes.get("/api/senders/{id}")
async def get_sender(request: web.Request) -> web.Response:
    sender = await request.app[SENDERS].get(current_user(request), path_id(request))
    return json_response(sender_json(sender))


@routes.patch("/api/senders/{id}")
async def update_sender(request: web.Request) -> web.Response:
    service = request.app[SENDERS]
    sender = await service.update(
        current_user(request), path_id(request), await json_object(request)
    )
    return json_response(sender_json(sender))


@routes.delete("/api/senders/{id}")
async def delete_sender(request: web.Request) -> web.Response:
    cancel = query_flag(request, "cancel_queued")
    service = request.app[SENDERS]
    cancelled = await service.delete(current_user(request), path_id(request), cancel_queued=cancel)
    return json_response({"deleted": True, "cancelled": cancelled})


@routes.post("/api/senders/{id}/resume")
async def resume_sender(request: web.Request) -> web.Response:
    """Unpark a sender whose account the server kept refusing: its emails go again."""
    sender = await request.app[SENDERS].resume(current_user(request), path_id(request))
    return json_response(sender_json(sender))


@routes.post("/api/senders/{id}/test")
async def test_sender(request: web.Request) -> web.Response:
    """Connect, negotiate TLS, log in; with {"send_test_message": true}, mail the owner."""
    user = current_user(request)
    body = await json_object(request, empty={})
    send = body.get("send_test_message", False)
    if not isinstance(send, bool):
        raise ValidationError("send_test_message", "must be true or false")
    settings, service = request.app[SETTINGS], request.app[SENDERS]
    registry = TransportRegistry(
        list(service.transports.values()), settings, request.app[POOL], secret_box(settings)
    )
    result = await service.check(registry, user, path_id(request), user.email if send else None)
    return json_response(result)
