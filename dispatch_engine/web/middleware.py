"""Errors as JSON (never a stack trace to a user), body limits and bearer-token authentication."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from ..config import Settings
from ..errors import ApiError
from ..models import User
from .bodies import form, too_large
from .keys import SESSIONS, SETTINGS, STORE

log = logging.getLogger(__name__)
USER = web.RequestKey("user", User)
# Routes that take CSV uploads or whole templates; every other route takes small bodies.
UPLOAD_ROUTES = frozenset(
    {"/api/emails/schedule", "/api/compose/recipients", "/api/compose/preview", "/compose"}
)
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
API_TOKEN_ID = web.RequestKey("api_token_id", int)  # set when a bearer token named the user


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


def _error(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.body(), exc.status)
    except web.HTTPRequestEntityTooLarge:  # read past the app's client_max_size
        return json_response(too_large(request.client_max_size).body(), 413)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return _error(exc.status, code, exc.text or exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal_error", "something went wrong on our side; it is logged")


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Each route's byte cap, as the request's client_max_size (413 past it, before reading).

    A dashboard form (which the CSRF check reads before anything else) is parsed here first,
    so a malformed one is a 400 (aiohttp caches the result for the later readers). API
    bodies are left to their handlers (web/bodies.py), which run after authentication.
    """
    if request.method in ("GET", "HEAD", "OPTIONS") and not request.body_exists:
        return await handler(request)
    settings = request.app.get(SETTINGS) or Settings()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else ""
    limit = settings.max_upload_bytes if route in UPLOAD_ROUTES else settings.max_body_bytes
    forms = request.content_type in _FORMS and not request.path.startswith("/api/")
    sessions = request.app.get(SESSIONS)
    if forms and sessions is not None and not sessions.may_upload(request):
        limit = settings.max_body_bytes  # parsed before the session is looked up
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    limited = request.clone(client_max_size=limit)
    fields = None
    try:
        # Only where the CSRF check reads it anyway: the API parses its own bodies after auth.
        if forms:
            fields = await form(limited)
        return await handler(limited)
    except web.HTTPRequestEntityTooLarge:  # a body read past the route's own cap
        raise too_large(limit) from None
    finally:  # aiohttp closes the uploads' spool files of the request it made, not a clone's
        for value in (fields or {}).values():
            if isinstance(value, web.FileField):
                value.file.close()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    api = request.path.startswith("/api/") and request.path != "/api/openapi.json"
    # A browser's session (web/guard.py) may already have named the user.
    if api and USER not in request:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "unauthenticated",
                "send an API token: Authorization: Bearer <token> "
                "(create one with `dispatch-engine token create --email you@example.com`)",
            )
        found = await request.app[STORE].token_user(token.strip()) if len(token) < 200 else None
        if found is None:
            raise ApiError(401, "invalid_token", "the API token is unknown, expired or revoked")
        request[USER], request[API_TOKEN_ID] = found
    return await handler(request)


def current_user(request: web.Request) -> User:
    user: User = request[USER]
    return user
