"""The suppression list over the API (`/api/suppressions`); the page is web/suppression_pages.py.

Scoped to the caller: another owner's entries are neither listed, found, nor removed, and
an address of theirs looks like any address nobody suppressed. Addresses are matched in
their one form (`consent.addresses.normalize_address`). See docs/suppressions.md.
"""

from __future__ import annotations

from aiohttp import web

from ... import suppressions
from ...consent.addresses import AddressError, normalize_address
from ...errors import Malformed, NotFound, ValidationError
from ..app_keys import SETTINGS, STORE
from ..bodies import json_object, multipart_fields, off_loop
from ..middleware import current_user
from ..paging import api_limit, decode_id_cursor
from ..presenters import listing, suppression_json
from ..responses import json_response

routes = web.RouteTableDef()


def lookup_key(value: str, field: str = "email") -> str:
    """An address to look up or remove, in its one form (a 422 naming the field if none)."""
    try:
        return normalize_address(value)
    except AddressError as exc:
        raise ValidationError(field, str(exc)) from None


@routes.get("/api/suppressions")
async def list_suppressions(request: web.Request) -> web.Response:
    """Newest first, keyset-paged; `?email=` looks one address up."""
    user, store = current_user(request), request.app[STORE]
    email = request.query.get("email")
    if email is not None:
        found = await store.suppression(user.id, lookup_key(email))
        return json_response(listing([suppression_json(found)] if found else [], None))
    limit = api_limit(request)
    before = decode_id_cursor(request.query.get("cursor"))
    rows = await store.list_suppressions(user.id, limit + 1, before)
    items = [suppression_json(s) for s in rows[:limit]]
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return json_response(listing(items, next_cursor))


@routes.post("/api/suppressions")
async def add_suppressions(request: web.Request) -> web.Response:
    """Add one or many addresses (`manual`); each bad one is reported with its index."""
    body = await json_object(request)
    entries, _, _ = await off_loop(suppressions.parse_add, body)
    answer = await suppressions.save(request.app[STORE], current_user(request).id, entries, "api")
    return json_response(answer, 201 if answer["added"] else 200)


@routes.delete("/api/suppressions/{email}")
async def remove_suppression(request: web.Request) -> web.Response:
    key = lookup_key(request.match_info["email"])
    if not await request.app[STORE].unsuppress(current_user(request).id, key):
        raise NotFound("that address is not on your suppression list")
    return json_response({"removed": key})


async def _csv_upload(request: web.Request) -> bytes:
    """The CSV of an import: a multipart `file` part, or the body itself (text/csv)."""
    if request.content_type.startswith("multipart/"):
        upload = (await multipart_fields(request)).get("file")
        if not upload:
            raise ValidationError("file", "upload a CSV file as the multipart part `file`")
        return upload
    if request.content_type not in ("text/csv", "text/plain"):
        raise Malformed(
            "send the CSV as text/csv, or as the part `file` of a multipart/form-data body",
            code="unsupported_media_type",
        )
    return await request.read()


@routes.post("/api/suppressions/import")
async def import_suppressions(request: web.Request) -> web.Response:
    """A CSV (`email`, optional `reason` and `detail`); bad rows reported by line number."""
    source = await _csv_upload(request)
    max_lines = request.app[SETTINGS].max_upload_lines
    entries = await off_loop(suppressions.parse_import, source, max_lines)
    answer = await suppressions.save(request.app[STORE], current_user(request).id, entries, "csv")
    return json_response(answer, 201 if answer["added"] else 200)


async def stream_export(request: web.Request, owner_id: int) -> web.StreamResponse:
    """The owner's list as a CSV download, streamed a page of rows at a time."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="suppressions.csv"',
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    async for chunk in suppressions.export_csv(request.app[STORE], owner_id):
        await response.write(chunk)
    await response.write_eof()
    return response


@routes.get("/api/suppressions/export")
async def export_suppressions(request: web.Request) -> web.StreamResponse:
    return await stream_export(request, current_user(request).id)
