"""Errors as JSON (never a stack trace to a user) and bearer-token authentication."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import ApiError
from ..models import User
from .keys import STORE

log = logging.getLogger(__name__)
USER = web.RequestKey("user", User)
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
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return _error(exc.status, code, exc.text or exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal_error", "something went wrong on our side; it is logged")


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
