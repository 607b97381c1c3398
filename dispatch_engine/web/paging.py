"""Keyset paging, one codec for the API and the dashboard: cursors, page sizes, next links.

A listing fetches one row more than it shows; that extra row says a next page exists, and
the last row shown is its cursor: `(time, id)` for the emails (opaque base64 JSON), the
plain id for campaigns and the inbox. The API refuses a cursor it did not make (a 422
naming the field); the dashboard shows the first page instead (a stale or edited link).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web

from ..errors import ValidationError
from ..parsing import INT64_MAX, aware_datetime, row_id, whole_number

T = TypeVar("T")
API_PAGE_SIZE = 50
API_MAX_PAGE_SIZE = 500


def encode_cursor(at: datetime, row: int) -> str:
    raw = orjson.dumps([at.isoformat(), row])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str | None, field: str = "cursor") -> tuple[datetime, int] | None:
    """The (time, id) a listing returned as its next cursor; None when not given."""
    if not value:
        return None
    error = ValidationError(field, "is not a cursor this API returned")
    if len(value) > 200 or not value.isascii():
        raise error
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise error from None
    if not isinstance(decoded, list) or len(decoded) != 2:
        raise error
    at, row = decoded
    if isinstance(row, bool) or not isinstance(row, int) or not 1 <= row <= INT64_MAX:
        raise error
    try:
        return aware_datetime(at, field), row
    except ValidationError:
        raise error from None


def decode_id_cursor(value: str | None, field: str = "cursor") -> int | None:
    """An id cursor (campaigns, inbox): the last id of the previous page; None when not given."""
    if not value:
        return None
    try:
        return row_id(value, field)
    except ValidationError:
        raise ValidationError(field, "is not a cursor this API returned") from None


def lenient(decode: Callable[[str | None], T | None], value: str | None) -> T | None:
    """A dashboard link's cursor: one it cannot read shows the first page."""
    try:
        return decode(value)
    except ValidationError:
        return None


def api_limit(request: web.Request) -> int:
    """The API's `?limit=` (50 unless given, at most 500)."""
    raw = request.query.get("limit", str(API_PAGE_SIZE))
    return whole_number(raw, "limit", minimum=1, maximum=API_MAX_PAGE_SIZE)


def time_cursor_after(rows: Sequence[Any], size: int, column: str) -> str | None:
    """The next page's (time, id) cursor, when `rows` (size + 1 fetched) has one more."""
    last = rows[size - 1] if len(rows) > size else None
    return encode_cursor(last[column], last["id"]) if last else None


def id_cursor_after(rows: Sequence[Any], size: int) -> int | None:
    """The next page's id cursor, when `rows` (size + 1 fetched) has one more."""
    return int(rows[size - 1]["id"]) if len(rows) > size else None
