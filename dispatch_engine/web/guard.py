"""The browser's gate: session lookup, CSRF checks, login redirects and safe page headers.

Runs before `auth_middleware`. An API request with an `Authorization` header is an API
client's: it is left to the bearer-token check. Otherwise the session cookie, if valid,
names the user, and every unsafe request must carry the CSRF token of that session (or,
before login, of the browser). Pages other than the public ones need a session; a visitor
without one is sent to the login page. A plain HTML form (no JavaScript) may post to the
API: it is answered with a redirect back, or an error page, instead of JSON.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from ..consent.unsubscribe import PATH as UNSUBSCRIBE_PATH
from ..errors import DomainError
from .app_keys import SESSIONS
from .bodies import form as read_form
from .middleware import USER
from .responses import HttpError, status_of
from .sessions import CSRF_FIELD, CSRF_HEADER, CSRF_TOKEN, SESSION_KEY, safe_next
from .templating import render

log = logging.getLogger(__name__)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
UNGUARDED_PREFIXES = ("/static/", "/healthz", "/readyz", "/metrics")
# RFC 8058 one-click unsubscribes are POSTed by mail providers, with no cookie, session or
# CSRF token: the signed token in the path is the capability (web/unsubscribe.py).
ONE_CLICK_PREFIX = UNSUBSCRIBE_PATH
# Provider feedback webhooks (builtins/provider_webhooks): the provider signs, no session.
UNGUARDED_PATHS = frozenset(
    f"/hooks/feedback/{p}" for p in ("ses", "sendgrid", "mailgun", "postmark")
)
PUBLIC_PREFIXES = ("/login", "/auth/", *UNGUARDED_PREFIXES)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Pages run no inline script; an email preview is sandboxed and may load its images.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: https: http:; frame-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


def _is_public(path: str) -> bool:
    return path.startswith(PUBLIC_PREFIXES) or path == "/favicon.ico"


async def _given_csrf(request: web.Request, *, api: bool) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    # The API reads its own body; only a plain urlencoded form is read here.
    allowed = FORM_TYPES[:1] if api else FORM_TYPES
    if request.content_type in allowed:
        form = await read_form(request)  # a malformed form is a 400
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def _refuse(request: web.Request, *, api: bool, message: str) -> web.StreamResponse:
    if api:
        raise HttpError(403, "csrf_failed", message)
    return render(request, "error.html", {"title": "Request refused", "message": message},
                  status=403)  # fmt: skip


def _secure_headers(response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")


@web.middleware
async def browser_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    manager = request.app.get(SESSIONS)
    api = request.path.startswith("/api/")
    if manager is None or (api and "Authorization" in request.headers):
        return await handler(request)
    if request.path.startswith(UNGUARDED_PREFIXES) or request.path in UNGUARDED_PATHS:
        return await handler(request)
    if request.path.startswith(ONE_CLICK_PREFIX):  # no session, no CSRF check: see above
        response = await handler(request)
        _secure_headers(response)
        return response
    session = await manager.find(request)
    if session is not None:
        request[USER] = session.user
        request[SESSION_KEY] = session.key
        request[CSRF_TOKEN] = manager.csrf_for_session(session.key)
    else:
        browser = manager.browser_id(request)
        if browser is not None:
            request[CSRF_TOKEN] = manager.csrf_for_browser(browser)

    form_to_api = False
    if request.method not in SAFE_METHODS and (session is not None or not api):
        given = await _given_csrf(request, api=api)
        if not manager.csrf_matches(request.get(CSRF_TOKEN), given):
            message = (
                "This form's security token is missing or does not match your session "
                "(CSRF protection), so nothing was done. Go back, reload the page and try again."
                if session is not None or request.get(CSRF_TOKEN)
                else "Your session has expired (or cookies are blocked), so nothing was done. "
                "Reload the page and try again."
            )
            return _refuse(request, api=api, message=message)
        form_to_api = api and CSRF_HEADER not in request.headers

    if not api and not _is_public(request.path) and session is None:
        if request.method in SAFE_METHODS:
            target = request.path_qs if request.path != "/" else "/"
            raise web.HTTPSeeOther(f"/login?next={quote(target, safe='/')}")
        return _refuse(request, api=False, message="Please sign in first.")

    if form_to_api:
        return await _form_to_api(request, handler)
    try:
        response = await handler(request)
    except web.HTTPNotFound:
        if api:
            raise
        response = render(request, "error.html", {"title": "Not found",
                          "message": "There is nothing at this address."}, status=404)  # fmt: skip
    if not api:
        _secure_headers(response)
    return response


async def _form_to_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A plain form posted to the API (JavaScript off): redirect back, or show the error."""
    form = await read_form(request)  # a malformed form is a 400
    back = form.get("next")
    if not isinstance(back, str):
        referer = URL(request.headers.get("Referer", "/"))
        back = referer.path_qs if referer.host in (None, request.url.host) else "/"
    target = safe_next(back)
    try:
        response = await handler(request)
    except DomainError as exc:
        response = render(request, "error.html",
                          {"title": "That did not work", "message": exc.message, "back": target},
                          status=status_of(exc))  # fmt: skip
        _secure_headers(response)
        return response
    if response.status >= 400:
        return response
    raise web.HTTPSeeOther(target)
