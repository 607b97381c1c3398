"""The API's request middlewares: each route's body cap, and bearer-token authentication.

Errors become responses in `web/responses.py`; `current_user(request)` is whoever a bearer
token or a dashboard session (web/guard.py) named.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from ..config import Settings
from ..models import User
from .app_keys import SESSIONS, SETTINGS, STORE
from .bodies import form
from .responses import HttpError, too_large

# RFC 6750 §3: a 401 names the scheme it wants, and why a token sent was refused.
ASK_FOR_TOKEN = {"WWW-Authenticate": 'Bearer realm="dispatch-engine"'}
REFUSED_TOKEN = {"WWW-Authenticate": 'Bearer realm="dispatch-engine", error="invalid_token"'}
USER = web.RequestKey("user", User)
# Routes that take CSV uploads or whole templates; every other route takes small bodies.
UPLOAD_ROUTES = frozenset(
    {
        "/api/emails/schedule",
        "/api/compose/recipients",
        "/api/compose/preview",
        "/api/compose/check",  # the whole form, templates included
        "/compose",
        "/api/suppressions/import",
        "/suppressions/import",
    }
)
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
API_TOKEN_ID = web.RequestKey("api_token_id", int)  # set when a bearer token named the user


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
            raise HttpError(
                401,
                "unauthenticated",
                "send an API token: Authorization: Bearer <token> "
                "(create one with `dispatch-engine token create --email you@example.com`)",
                headers=ASK_FOR_TOKEN,
            )
        found = await request.app[STORE].token_user(token.strip()) if len(token) < 200 else None
        if found is None:
            message = "the API token is unknown, expired or revoked"
            raise HttpError(401, "invalid_token", message, headers=REFUSED_TOKEN)
        request[USER], request[API_TOKEN_ID] = found
    return await handler(request)


def current_user(request: web.Request) -> User:
    user: User = request[USER]
    return user
