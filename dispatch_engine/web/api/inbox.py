"""The capture inbox over the API: what the capture transport received, listed and in full."""

from __future__ import annotations

from aiohttp import web

from ...errors import NotFound
from ..app_keys import STORE
from ..middleware import current_user
from ..paging import api_limit, decode_id_cursor, id_cursor_after
from ..params import path_id
from ..presenters import inbox_item_json, inbox_message_json, listing
from ..responses import json_response

routes = web.RouteTableDef()


@routes.get("/api/inbox")
async def inbox(request: web.Request) -> web.Response:
    user, limit = current_user(request), api_limit(request)
    before = decode_id_cursor(request.query.get("cursor"))
    rows = await request.app[STORE].list_inbox(user.id, limit + 1, before)
    items = [inbox_item_json(r) for r in rows[:limit]]
    return json_response(listing(items, id_cursor_after(rows, limit)))


@routes.get("/api/inbox/{id}")
async def inbox_message(request: web.Request) -> web.Response:
    user = current_user(request)
    row = await request.app[STORE].inbox_message(user.id, path_id(request))
    if row is None:
        raise NotFound("no such message")
    return json_response(inbox_message_json(row))
