"""API tokens over the API (`/api/tokens`); the dashboard's page is web/token_pages.py.

Scoped to the caller: another user's token is "not found", never revoked. The secret
appears once, in the answer that made it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from ... import tokens
from ...errors import NotFound
from ..app_keys import STORE
from ..bodies import json_object
from ..middleware import API_TOKEN_ID, current_user
from ..params import path_id
from ..presenters import token_json
from ..responses import created, json_response

routes = web.RouteTableDef()


@routes.get("/api/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    found = await request.app[STORE].tokens_of(current_user(request).id, tokens.LIST_LIMIT)
    now = datetime.now(UTC)
    return json_response({"items": [token_json(t, now) for t in found]})


@routes.post("/api/tokens")
async def create_token(request: web.Request) -> web.Response:
    name, expires_in = tokens.read_request(await json_object(request, empty={}))
    made = await tokens.create_for(
        request.app[STORE], current_user(request), name, expires_in, request.get(API_TOKEN_ID)
    )
    body = {**token_json(made.info), "token": made.token}
    return created(body, f"/api/tokens/{made.info.id}")


@routes.delete("/api/tokens/{id}")
async def revoke_token(request: web.Request) -> web.Response:
    revoked = await request.app[STORE].revoke_token(path_id(request), current_user(request).id)
    if revoked is None:
        raise NotFound("no such API token")
    return json_response({"revoked": revoked})
