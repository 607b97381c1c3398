"""The senders API: sending identities with their own account, transport and limits."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import invalid
from ..parsing import row_id
from ..secretbox import secret_box
from ..senders import public
from ..transport import TransportRegistry
from .bodies import json_object
from .keys import POOL, SENDERS, SETTINGS
from .middleware import current_user, json_response

routes = web.RouteTableDef()


async def _body(request: web.Request) -> dict[str, Any]:
    return await json_object(request)


def _sender_id(request: web.Request) -> int:
    return row_id(request.match_info["id"])


@routes.get("/api/senders")
async def list_senders(request: web.Request) -> web.Response:
    senders = await request.app[SENDERS].store.senders_of(current_user(request).id)
    return json_response({"items": [public(s) for s in senders]})


@routes.post("/api/senders")
async def create_sender(request: web.Request) -> web.Response:
    limit = request.app[SETTINGS].max_emails_per_hour
    sender = await request.app[SENDERS].create(current_user(request), await _body(request), limit)
    return json_response(public(sender), 201)


@routes.get("/api/senders/{id}")
async def get_sender(request: web.Request) -> web.Response:
    sender = await request.app[SENDERS].get(current_user(request), _sender_id(request))
    return json_response(public(sender))


@routes.patch("/api/senders/{id}")
async def update_sender(request: web.Request) -> web.Response:
    service = request.app[SENDERS]
    sender = await service.update(current_user(request), _sender_id(request), await _body(request))
    return json_response(public(sender))


@routes.delete("/api/senders/{id}")
async def delete_sender(request: web.Request) -> web.Response:
    cancel = request.query.get("cancel_queued", "false").lower() in ("1", "true", "yes")
    service = request.app[SENDERS]
    cancelled = await service.delete(
        current_user(request), _sender_id(request), cancel_queued=cancel
    )
    return json_response({"deleted": True, "cancelled": cancelled})


@routes.post("/api/senders/{id}/resume")
async def resume_sender(request: web.Request) -> web.Response:
    """Unpark a sender whose account the server kept refusing: its emails go again."""
    sender = await request.app[SENDERS].resume(current_user(request), _sender_id(request))
    return json_response(public(sender))


@routes.post("/api/senders/{id}/test")
async def test_sender(request: web.Request) -> web.Response:
    """Connect, negotiate TLS, log in; with {"send_test_message": true}, mail the owner."""
    user = current_user(request)
    body = await json_object(request, empty={})
    send = body.get("send_test_message", False)
    if not isinstance(send, bool):
        raise invalid("send_test_message", "must be true or false")
    settings, service = request.app[SETTINGS], request.app[SENDERS]
    registry = TransportRegistry(
        list(service.transports.values()), settings, request.app[POOL], secret_box(settings)
    )
    result = await service.check(registry, user, _sender_id(request), user.email if send else None)
    return json_response(result)
