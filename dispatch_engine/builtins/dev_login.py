"""Dev login: "Continue as dev user", signs in as dev@example.com without a password.

Offered only in local mode: no GOOGLE_CLIENT_ID / OIDC_* configured and the app bound to
loopback (or DISPATCH_DEV_LOGIN=true, which warns at start: anyone who reaches the port signs
in). It is the same user that `dispatch-engine up` prints an API token for, so the dashboard
and the API agree.
"""

from __future__ import annotations

from aiohttp import web

from dispatch_engine.plugin import (
    DEV_EMAIL,
    AuthContext,
    AuthProviderSpec,
    LoginIdentity,
    Settings,
    hookimpl,
)


async def _start(request: web.Request, context: AuthContext) -> LoginIdentity:
    return LoginIdentity("dev", DEV_EMAIL, DEV_EMAIL, email_verified=True, name="Dev User")


@hookimpl(trylast=True)
def register_auth_providers(settings: Settings) -> list[AuthProviderSpec]:
    if not settings.dev_login_enabled:
        return []
    return [AuthProviderSpec("dev", "Continue as dev user", _start, description="local mode")]
