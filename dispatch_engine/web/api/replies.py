"""A campaign's replies: `GET /api/campaigns/{id}/replies` (docs/replies.md).

Newest first, keyset-paged by id (`?cursor=`, `?limit=`); `?kind=auto_reply` lists the
automatic answers (out-of-office and the like) instead of the replies people wrote. Only
the campaign's owner sees them (another's campaign is a 404, as if it did not exist).
"""

from __future__ import annotations

from aiohttp import web

from ...errors import NotFound, ValidationError
from ..app_keys import STORE
from ..middleware import current_user
from ..paging import api_limit, decode_id_cursor, id_cursor_after
from ..params import path_id
from ..presenters import listing, reply_json
from ..responses import json_response

routes = web.RouteTableDef()
KINDS = ("reply", "auto_reply")


@routes.get("/api/campaigns/{id}/replies")
async def campaign_replies(request: web.Request) -> web.Response:
    user, store = current_user(request), request.app[STORE]
    campaign_id, limit = path_id(request), api_limit(request)
    kind = request.query.get("kind", "reply")
    if kind not in KINDS:
        raise ValidationError("kind", f"must be one of {', '.join(KINDS)}")
    before = decode_id_cursor(request.query.get("cursor"))
    if not await store.owns_campaign(user.id, campaign_id):
        raise NotFound("no such campaign")
    rows = await store.campaign_replies(user.id, campaign_id, kind, limit + 1, before)
    items = [reply_json(r) for r in rows[:limit]]
    return json_response(listing(items, id_cursor_after(rows, limit)))
