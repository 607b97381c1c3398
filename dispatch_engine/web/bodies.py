"""Reading request bodies under limits: JSON objects, multipart uploads and forms.

The byte cap of each route is the request's `client_max_size`, set by
`middleware.body_limit_middleware`. A body that is not what the route takes is a 400, one
over the cap a 413; both in the API's JSON error shape (web/responses.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from aiohttp import BodyPartReader, web
from multidict import MultiDictProxy

from ..config import Settings
from ..errors import Malformed, ValidationError
from ..recipients import Limits
from .responses import too_large

# Raised by aiohttp's multipart and form readers on a body that does not parse (a bad
# Content-Disposition is a warning, raised where warnings are errors, as in the tests).
_MALFORMED = (ValueError, AssertionError, LookupError, TypeError, RuntimeWarning)
_JSON_IN_THREAD = 256 * 1024  # decoding a bigger JSON body would hold the loop noticeably
# Its own small pool: asyncio's default executor also resolves host names (SMTP connects),
# which a few big uploads must not queue behind.
_PARSERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dispatch-parse")
T = TypeVar("T")


async def off_loop(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run CPU-bound parsing in a worker thread, so the event loop keeps serving."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_PARSERS, functools.partial(fn, *args, **kwargs))


def upload_limits(settings: Settings) -> Limits:
    return Limits(max_recipients=settings.max_recipients, max_lines=settings.max_upload_lines)


def decode_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Malformed("the request body must be a JSON object")
    return body


async def json_object(
    request: web.Request, *, empty: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The body as a JSON object (400 otherwise); `empty` is the answer to no body at all."""
    raw = await request.read()
    if not raw and empty is not None:
        return empty
    if len(raw) > _JSON_IN_THREAD:
        return await off_loop(decode_json_object, raw)
    return decode_json_object(raw)


async def multipart_fields(request: web.Request) -> dict[str, bytes]:
    """Each named part's bytes, streamed under the route's byte cap (a 400 if malformed).

    Parts are taken as sent: a Content-Encoding or Content-Transfer-Encoding is not undone
    (browsers send neither, RFC 7578), so a compressed part cannot expand past the cap.
    """
    limit = request.client_max_size
    fields: dict[str, bytes] = {}
    size = 0
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            chunks = []
            while chunk := await part.read_chunk():
                size += len(chunk)
                if size > limit:
                    raise too_large(limit, part.name)
                chunks.append(chunk)
            fields[part.name] = b"".join(chunks)
    except _MALFORMED as exc:
        raise Malformed(
            f"the multipart body is malformed: {exc}", code="invalid_multipart"
        ) from None
    return fields


async def form(request: web.Request) -> MultiDictProxy[Any]:
    """`request.post()`, with a malformed form a 400 instead of an exception."""
    try:
        return await request.post()
    except _MALFORMED as exc:
        raise Malformed(f"the form body is malformed: {exc}", code="invalid_form") from None


def utf8(raw: bytes, field: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError(field, "must be UTF-8 text (save the CSV as UTF-8)") from None
