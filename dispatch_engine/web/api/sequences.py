"""A sequence's recipients over the API: each one's state, and a stop by hand."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...errors import InvalidState, NotFound, ValidationError
from ...store.sequences import MEMBER_STATES
from ..app_keys import QUEUE, STORE
from ..events import publish
from ..middleware import current_user
from ..paging import api_limit, decode_id_cursor, id_cursor_after
from ..params import path_id
from ..presenters import iso, listing
from ..responses import json_response

routes = web.RouteTableDef()


def member_json(row: Any) -> dict[str, Any]:
    """One recipient's place in the sequence: `waiting_for_step` while it waits."""
    return {
        "recipient": row["recipient"],
        "state": row["state"],
        "step": row["step"],
        "waiting_for_step": row["step"] + 1 if row["state"] == "waiting" else None,
        "next_due_at": iso(row["next_due_at"]),
        "stop_reason": row["stop_reason"],
        "dispatch_id": row["dispatch_id"],
        "updated_at": iso(row["updated_at"]),
    }


async def _owned(request: web.Request) -> int:
    campaign_id = path_id(request)
    if not await request.app[STORE].owns_campaign(current_user(request).id, campaign_id):
        raise NotFound("no such campaign")
    return campaign_id


@routes.get("/api/campaigns/{id}/recipients")
async def recipients(request: web.Request) -> web.Response:
    """A page of the campaign's sequence members (`?state=` one of MEMBER_STATES)."""
    campaign_id, limit = await _owned(request), api_limit(request)
    state = request.query.get("state") or None
    if state is not None and state not in MEMBER_STATES:
        raise ValidationError("state", f"must be one of {', '.join(MEMBER_STATES)}")
    after = decode_id_cursor(request.query.get("cursor"))
    rows = await request.app[STORE].list_members(campaign_id, limit + 1, after, state)
    items = [member_json(r) for r in rows[:limit]]
    return json_response(listing(items, id_cursor_after(rows, limit)))


async def stop_recipient(request: web.Request, campaign_id: int, email: str) -> dict[str, Any]:
    """Stop one recipient's sequence (the API's and the campaign page's way)."""
    if not email or len(email) > 320:
        raise ValidationError("email", "must be a recipient's address")
    store = request.app[STORE]
    member, cancelled = await store.stop_member(campaign_id, email, "manual")
    if member is None:
        raise NotFound("no such recipient in this campaign's sequence")
    if member["state"] not in ("active", "waiting"):
        raise InvalidState(f"the sequence of {email} is {member['state']} already")
    for row in cancelled:  # its pending step: out of Redis now (the worker would drop it)
        await request.app[QUEUE].remove(row["sender_id"], [row["id"]])
    user = current_user(request)
    await publish(request.app, {"type": "campaign", "id": campaign_id, "owner_id": user.id})
    (stopped,) = [
        r for r in await store.list_members(campaign_id, 1, member["first_dispatch_id"] - 1, None)
    ]
    return member_json(stopped)


@routes.post("/api/campaigns/{id}/recipients/{email}/stop")
async def stop(request: web.Request) -> web.Response:
    campaign_id = await _owned(request)
    member = await stop_recipient(request, campaign_id, request.match_info["email"])
    return json_response({"member": member})
