"""`GET /api/me`: who the token or the session belongs to."""

from __future__ import annotations

from aiohttp import web

from ..middleware import current_user
from ..presenters import user_json
from ..responses import json_response

routes = web.RouteTableDef()


@routes.get("/api/me")
async def me(request: web.Request) -> web.Response:
    return json_response(user_json(current_user(request)))
