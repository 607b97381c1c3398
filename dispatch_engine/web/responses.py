"""How the app answers: JSON bodies, and every error as JSON with its status.

`error_middleware` is the one place where an error becomes HTTP: a domain error
(`dispatch_engine.errors`) gets its kind's status, an `HttpError` (the web layer's own
refusals: 401, 403, 413) carries one. Nothing else reaches a user as a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import Conflict, DomainError, InvalidState, Malformed, NotFound, ValidationError

log = logging.getLogger(__name__)
# Checked in order: the first kind an error is an instance of gives its status.
STATUS_OF_KIND: tuple[tuple[type[DomainError], int], ...] = (
    (ValidationError, 422),
    (Malformed, 400),
    (NotFound, 404),
    (InvalidState, 409),
    (Conflict, 409),
)


class HttpError(DomainError):
    """A refusal of the HTTP layer itself, which names its status (authentication, CSRF,
    a body past its byte cap)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, field=field)
        self.status = status
        self.headers = dict(headers or {})  # e.g. a 401's WWW-Authenticate (RFC 6750)


def status_of(error: DomainError) -> int:
    if isinstance(error, HttpError):
        return error.status
    return next((status for kind, status in STATUS_OF_KIND if isinstance(error, kind)), 400)


def error_body(error: DomainError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.field is not None:
        body["field"] = error.field
    if error.details is not None:
        body["details"] = error.details
    return {"error": body}


def json_response(
    data: Any, status: int = 200, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def created(data: Any, location: str) -> web.Response:
    """A 201 naming the new object's API URL in `Location` (RFC 9110 §15.3.2)."""
    return json_response(data, 201, headers={"Location": location})


def too_large(limit: int, field: str = "body") -> HttpError:
    return HttpError(
        413, "too_large", f"{field}: the request body is larger than {limit} bytes", field=field
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DomainError as exc:
        headers = exc.headers if isinstance(exc, HttpError) else None
        return json_response(error_body(exc), status_of(exc), headers=headers)
    except web.HTTPRequestEntityTooLarge:  # read past the app's client_max_size
        return json_response(error_body(too_large(request.client_max_size)), 413)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return json_response({"error": {"code": code, "message": exc.text or exc.reason}},
                             exc.status)  # fmt: skip
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        message = "something went wrong on our side; it is logged"
        return json_response({"error": {"code": "internal_error", "message": message}}, 500)
