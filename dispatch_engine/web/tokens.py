"""API tokens over HTTP: the `/api/tokens` API and the dashboard's "API tokens" page.

Both are scoped to the caller: another user's token is "not found", never revoked. The
secret appears once, in the answer that made it. The page's forms are plain HTML posts,
CSRF-checked by `web/guard.py` before they reach these handlers.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from .. import tokens
from ..errors import ApiError, invalid
from .keys import STORE
from .middleware import API_TOKEN_ID, current_user, json_response
from .views import render

routes = web.RouteTableDef()
# What the page offers (a form cannot send anything else without being refused).
PAGE_EXPIRIES = {"": "Never", "7d": "7 days", "30d": "30 days", "90d": "90 days",
                 "365d": "1 year"}  # fmt: skip


def _token_id(request: web.Request) -> int:
    token_id = tokens.parse_id(request.match_info["id"])
    if token_id is None:
        raise invalid("id", "must be a token id (a whole number)")
    return token_id


async def _json_body(request: web.Request) -> object:
    if not request.can_read_body:
        return {}
    try:
        return await request.json()
    except ValueError:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None


@routes.get("/api/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    found = await request.app[STORE].tokens_of(current_user(request).id, tokens.LIST_LIMIT)
    now = datetime.now(UTC)
    return json_response({"items": [tokens.public(t, now) for t in found]})


@routes.post("/api/tokens")
async def create_token(request: web.Request) -> web.Response:
    name, expires_in = tokens.read_request(await _json_body(request))
    made = await tokens.create_for(
        request.app[STORE], current_user(request), name, expires_in, request.get(API_TOKEN_ID)
    )
    return json_response({**tokens.public(made.info), "token": made.token}, 201)


@routes.delete("/api/tokens/{id}")
async def revoke_token(request: web.Request) -> web.Response:
    revoked = await request.app[STORE].revoke_token(_token_id(request), current_user(request).id)
    if revoked is None:
        raise ApiError(404, "not_found", "no such API token")
    return json_response({"revoked": revoked})


async def _page(
    request: web.Request,
    *,
    secret: str = "",
    error: str = "",
    name: str = "",
    status: int = 200,
) -> web.Response:
    found = await request.app[STORE].tokens_of(current_user(request).id, tokens.LIST_LIMIT)
    now = datetime.now(UTC)
    context = {
        "title": "API tokens",
        "tokens": [(t, t.status(now)) for t in found],
        "expiries": PAGE_EXPIRIES,
        "secret": secret,
        "error": error,
        "name": name,
        "revoked": request.query.get("revoked", ""),
    }
    return render(request, "tokens.html", context, status=status)


@routes.get("/tokens")
async def tokens_page(request: web.Request) -> web.Response:
    return await _page(request)


@routes.post("/tokens")
async def create_from_page(request: web.Request) -> web.Response:
    form = await request.post()
    raw_name, raw_expiry = form.get("name", ""), form.get("expires_in", "")
    if not isinstance(raw_name, str) or not isinstance(raw_expiry, str):
        return await _page(request, error="Send the form's fields as text.", status=400)
    if raw_expiry not in PAGE_EXPIRIES:
        return await _page(request, error="Choose an expiry from the list.", status=422)
    try:
        name = tokens.check_name(raw_name)
    except ValueError as exc:
        return await _page(request, error=f"Name {exc}.", name=raw_name[:200], status=422)
    expires_in = tokens.parse_duration(raw_expiry) if raw_expiry else None
    try:
        made = await tokens.create_for(request.app[STORE], current_user(request), name, expires_in)
    except ApiError as exc:
        return await _page(request, error=exc.message, name=name, status=exc.status)
    # Shown in this answer only (no-store); reloading the page does not show it again.
    return await _page(request, secret=made.token)


@routes.post("/tokens/{id}/revoke")
async def revoke_from_page(request: web.Request) -> web.StreamResponse:
    token_id = tokens.parse_id(request.match_info["id"])
    revoked = None
    if token_id is not None:
        revoked = await request.app[STORE].revoke_token(token_id, current_user(request).id)
    if revoked is None:
        return await _page(request, error="There is no such token.", status=404)
    raise web.HTTPSeeOther(f"/tokens?revoked={token_id}")
