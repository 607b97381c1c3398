"""The dashboard's "Suppressions" page: the list (paged, with a look-up), add, remove, CSV
import and export.

Scoped to the signed-in user, as the API is (web/api/suppressions.py), and through the same
domain functions (`dispatch_engine.suppressions`). The forms are plain HTML posts,
CSRF-checked by `web/guard.py` before they reach these handlers.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import suppressions
from ..errors import DomainError
from .api.suppressions import lookup_key, stream_export
from .app_keys import SETTINGS, STORE
from .bodies import form as read_form
from .bodies import off_loop
from .middleware import current_user
from .paging import decode_id_cursor, lenient
from .presenters import suppression_json
from .responses import status_of
from .templating import render

routes = web.RouteTableDef()
PAGE_SIZE = 25


async def _page(
    request: web.Request,
    *,
    result: dict[str, Any] | None = None,
    error: str = "",
    values: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    user, store = current_user(request), request.app[STORE]
    query = request.query
    found: list[Any] = []
    searched = query.get("email", "").strip()
    next_cursor = None
    if searched:
        try:
            entry = await store.suppression(user.id, lookup_key(searched))
        except DomainError:
            entry = None
        found = [entry] if entry else []
    else:
        before = lenient(decode_id_cursor, query.get("cursor"))
        rows = await store.list_suppressions(user.id, PAGE_SIZE + 1, before)
        found = rows[:PAGE_SIZE]
        next_cursor = rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None
    context = {
        "title": "Suppressions",
        "entries": [suppression_json(s) for s in found],
        "next_cursor": next_cursor,
        "paged": bool(query.get("cursor")),
        "searched": searched[:320],
        "removed": query.get("removed", "")[:320],
        "result": result,
        "error": error,
        "values": values or {},
    }
    return render(request, "suppressions.html", context, status=status)


async def _save(request: web.Request, entries: suppressions.Entries, source: str) -> dict[str, Any]:
    return await suppressions.save(request.app[STORE], current_user(request).id, entries, source)


async def _refused(
    request: web.Request, exc: DomainError, values: dict[str, str] | None = None
) -> web.Response:
    """The page with the error, and the refused rows when the error lists them."""
    details = exc.details if isinstance(exc.details, dict) else None
    return await _page(
        request, error=exc.message, values=values, result=details, status=status_of(exc)
    )


@routes.get("/suppressions")
async def suppressions_page(request: web.Request) -> web.Response:
    return await _page(request)


@routes.post("/suppressions")
async def add_from_page(request: web.Request) -> web.Response:
    form = await read_form(request)
    raw, detail = form.get("emails", ""), form.get("detail", "")
    if not isinstance(raw, str) or not isinstance(detail, str):
        return await _page(request, error="Send the form's fields as text.", status=400)
    values = {"emails": raw[:20_000], "detail": detail[:1000]}
    # One address a line, or several separated by commas.
    emails = [part for line in raw.splitlines() for part in line.split(",")]
    body = {"emails": [e for e in emails if e.strip()], "detail": detail}
    try:
        entries, _, _ = await off_loop(suppressions.parse_add, body)
        result = await _save(request, entries, "dashboard")
    except DomainError as exc:
        return await _refused(request, exc, values)
    return await _page(request, result=result)


@routes.post("/suppressions/remove")
async def remove_from_page(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    email = form.get("email", "")
    removed = False
    if isinstance(email, str) and email.strip():
        try:
            key = lookup_key(email)
        except DomainError:
            key = ""
        removed = bool(key) and await request.app[STORE].unsuppress(current_user(request).id, key)
    if not removed:
        return await _page(request, error="That address is not on your list.", status=404)
    raise web.HTTPSeeOther(f"/suppressions?removed={key}")


@routes.post("/suppressions/import")
async def import_from_page(request: web.Request) -> web.Response:
    form = await read_form(request)
    upload = form.get("file")
    if not isinstance(upload, web.FileField) or not upload.filename:
        return await _page(request, error="Choose a CSV file to import.", status=422)
    source = upload.file.read()
    max_lines = request.app[SETTINGS].max_upload_lines
    try:
        entries = await off_loop(suppressions.parse_import, source, max_lines)
        result = await _save(request, entries, "csv")
    except DomainError as exc:
        return await _refused(request, exc)
    return await _page(request, result=result)


@routes.get("/suppressions/export")
async def export_from_page(request: web.Request) -> web.StreamResponse:
    return await stream_export(request, current_user(request).id)
