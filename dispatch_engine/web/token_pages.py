"""The dashboard's "API tokens" page: list, create (the secret shown once) and revoke.

Scoped to the signed-in user, as the API is (web/api/tokens.py). The forms are plain HTML
posts, CSRF-checked by `web/guard.py` before they reach these handlers.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from .. import tokens
from ..errors import DomainError
from .app_keys import STORE
from .bodies import form as bodies_form
from .middleware import current_user
from .responses import status_of
from .templating import render

routes = web.RouteTableDef()
# What the page offers (a form cannot send anything else without being refused).
PAGE_EXPIRIES = {"": "Never", "7d": "7 days", "30d": "30 days", "90d": "90 days",
                 "365d": "1 year"}  # fmt: skip


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
    form = await bodies_form(request)
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
    except DomainError as exc:
        return await _page(request, error=exc.message, name=name, status=status_of(exc))
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
