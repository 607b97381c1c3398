"""Login and logout: the login page, the provider routes, and turning an identity into a session.

Providers are plugins (`register_auth_providers`): `POST /auth/<name>/start` (CSRF-checked
by the browser gate) and `GET /auth/<name>/callback` call their handlers; whatever identity
they verify is linked to a user here, and a new server-side session starts. Only a verified
email may sign in, and only one that DISPATCH_ALLOWED_EMAILS permits when it is set.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from ..auth import AuthContext, AuthError, AuthProviderSpec, LoginFlows, LoginIdentity
from ..config import Settings
from ..senders import default_sender
from .app_keys import AUTH_PROVIDERS, HOOKS, HTTP_CLIENT, REDIS, SESSIONS, SETTINGS, STORE
from .middleware import USER
from .sessions import CSRF_TOKEN, safe_next
from .templating import render

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


async def providers_context(app: web.Application) -> AsyncIterator[None]:
    """Collect the login providers and open the HTTP client they use (api role)."""
    settings = app[SETTINGS]
    specs = {spec.name: spec for spec in await app[HOOKS].auth_providers()}
    app[AUTH_PROVIDERS] = specs
    if not specs:
        log.warning("no login provider is configured: the dashboard cannot be signed in to")
    elif "dev" in specs and not settings.loopback_bind:  # only with DISPATCH_DEV_LOGIN=true
        log.warning("DISPATCH_DEV_LOGIN is on and the app listens on %s: anyone who can reach "
                    "it signs in as the dev user without a password; configure OIDC_* instead",
                    settings.host)  # fmt: skip
    _warn_if_anyone_may_sign_in(settings)
    timeout = aiohttp.ClientTimeout(total=15)
    headers = {"User-Agent": "dispatch-engine", "Accept": "application/json"}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
        app[HTTP_CLIENT] = http
        yield


def _warn_if_anyone_may_sign_in(settings: Settings) -> None:
    """Loudly (log and a stderr line): a reachable deployment lets every account sign up."""
    if settings.allowed_emails is not None:
        return
    if settings.oidc is None and settings.loopback_bind:
        return  # local mode on loopback: the dev user only
    if settings.oidc is not None:
        who = f"anyone with a verified email at {settings.oidc.issuer}"
    else:
        who = f"anyone who reaches {settings.host}"
    message = (
        f"DISPATCH_ALLOWED_EMAILS is not set: {who} can sign in and create an account. "
        "Set DISPATCH_ALLOWED_EMAILS=you@example.com,@example.org (or * to allow anyone)."
    )
    log.warning(message)
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _provider(request: web.Request) -> AuthProviderSpec:
    spec = request.app[AUTH_PROVIDERS].get(request.match_info["name"])
    if spec is None:
        raise web.HTTPNotFound()
    return spec


def _context(request: web.Request, flows: LoginFlows) -> AuthContext:
    settings = request.app[SETTINGS]
    base = settings.base_url.rstrip("/") if settings.base_url else str(request.url.origin())
    name = request.match_info["name"]
    return AuthContext(settings, request.app[HTTP_CLIENT], flows, f"{base}/auth/{name}/callback")


def _login_page(request: web.Request, *, error: str, next_path: str, status: int) -> web.Response:
    manager = request.app[SESSIONS]
    browser = manager.browser_id(request)
    fresh = browser is None
    if browser is None:
        browser = manager.new_browser_id()
    if request.get(USER) is None:
        # The login buttons are forms too: their token is bound to this browser.
        request[CSRF_TOKEN] = manager.csrf_for_browser(browser)
    context = {"error": error, "next": next_path, "signed_out": "signed_out" in request.query}
    response = render(request, "login.html", context, status=status)
    if fresh:
        manager.set_browser(response, browser)
    return response


@routes.get("/login")
async def login(request: web.Request) -> web.StreamResponse:
    next_path = safe_next(request.query.get("next"))
    if request.get(USER) is not None:
        raise web.HTTPSeeOther(next_path)
    return _login_page(request, error="", next_path=next_path, status=200)


async def _finish(
    request: web.Request, spec: AuthProviderSpec, identity: LoginIdentity, next_path: str
) -> web.StreamResponse:
    """Link the identity to a user (creating one if new) and start their session."""
    store, settings = request.app[STORE], request.app[SETTINGS]
    if not identity.email or not identity.subject:
        raise AuthError(f"{spec.label}: the provider did not tell us your email address")
    if not identity.email_verified:
        raise AuthError(
            f"{identity.email} is not verified by the sign-in provider, so it cannot be used "
            "to sign in. Verify your email address with the provider, then sign in again."
        )
    allowed = settings.allowed_emails
    if allowed is not None and not allowed.permits(identity.email):
        raise AuthError(
            f"{identity.email} may not sign in here. Ask whoever runs this Dispatch Engine "
            "to add your address (or your domain) to its list of allowed emails."
        )
    user = await store.login_identity(
        identity.provider,
        identity.subject,
        identity.email,
        email_verified=identity.email_verified,
        name=identity.name,
        avatar_url=identity.avatar_url,
    )
    if user is None:
        raise AuthError(
            f"An account with {identity.email} exists, and the provider has not verified that "
            "this address is yours, so it was not linked. Verify your email with the provider."
        )
    await default_sender(store, user, settings)  # a new user's first campaign has one
    response = web.Response(status=303, headers={"Location": safe_next(next_path)})
    await request.app[SESSIONS].start(request, response, user, identity.provider)
    log.info("user %s signed in with %s", user.email, spec.name)
    return response


async def _run(request: web.Request, step: str) -> web.StreamResponse:
    spec = _provider(request)
    browser = request.app[SESSIONS].browser_id(request) or ""
    if step == "start":
        form = await request.post()
        wanted = form.get("next")
        next_path = safe_next(wanted if isinstance(wanted, str) else None)
        flows = LoginFlows(request.app[REDIS], browser, next_path)
    else:
        flows = LoginFlows(request.app[REDIS], browser)
    context = _context(request, flows)
    try:
        if step == "start":
            result = await spec.start(request, context)
            if not isinstance(result, LoginIdentity):
                return result
            return await _finish(request, spec, result, flows.next_path)
        if spec.callback is None:
            raise web.HTTPNotFound()
        identity = await spec.callback(request, context)
        return await _finish(request, spec, identity, flows.next_path)
    except AuthError as exc:
        log.info("login with %s refused: %s", spec.name, exc)
        return _login_page(request, error=str(exc), next_path=flows.next_path, status=400)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("login with %s failed: %s: %s", spec.name, type(exc).__name__, exc)
        message = f"{spec.label}: the sign-in provider could not be reached. Try again."
        return _login_page(request, error=message, next_path=flows.next_path, status=502)


@routes.post("/auth/{name}/start")
async def auth_start(request: web.Request) -> web.StreamResponse:
    return await _run(request, "start")


@routes.get("/auth/{name}/callback")
async def auth_callback(request: web.Request) -> web.StreamResponse:
    return await _run(request, "callback")


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    response = web.Response(status=303, headers={"Location": "/login?signed_out=1"})
    await request.app[SESSIONS].end(request, response)
    return response
