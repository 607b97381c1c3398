"""Browser sessions: a signed cookie naming a server-side session, and CSRF tokens tied to it.

The cookie holds a random token signed with DISPATCH_SECRET_KEY (itsdangerous); PostgreSQL
keeps only its SHA-256, so logout revokes it for good. A CSRF token is an HMAC of the
session (or, before login, of a signed per-browser cookie): forms send it as `csrf_token`,
the dashboard's own JSON calls as the `X-CSRF-Token` header. Bearer-token API calls carry
no cookie and need neither.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from aiohttp import web
from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..config import Settings, ensure_secret_key
from ..models import User
from ..store import Store, hash_token

SESSION_COOKIE = "de_session"
BROWSER_COOKIE = "de_browser"
SESSION_TTL_S = 14 * 86_400
BROWSER_TTL_S = 86_400
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

SESSION_KEY = web.RequestKey("session_key", bytes)  # the session's token hash
CSRF_TOKEN = web.RequestKey("csrf_token", str)  # what this page's forms must send back


@dataclass(frozen=True)
class BrowserSession:
    user: User
    key: bytes  # SHA-256 of the session token, as stored


def safe_next(value: str | None) -> str:
    """A local path to go to after a login; anything else (another site) becomes `/`."""
    if not value or not value.startswith("/") or "\\" in value:
        return "/"
    # Browsers drop tabs and newlines from URLs: "/\t/evil.example" would become "//evil…".
    if value.startswith("//") or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "/"
    return value


class SessionManager:
    def __init__(self, settings: Settings, store: Store) -> None:
        secret = ensure_secret_key(settings).secret_key.encode()
        self.store = store
        self.secure = (settings.base_url or "").startswith("https://")
        self._csrf_key = hmac.digest(secret, b"dispatch-engine csrf", "sha256")
        self._sessions = URLSafeTimedSerializer(secret, salt="dispatch-engine session")
        self._browsers = URLSafeTimedSerializer(secret, salt="dispatch-engine browser")

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str, ttl: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=ttl,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.secure,
        )

    # ---- sessions ----

    async def start(
        self, request: web.Request, response: web.StreamResponse, user: User, provider: str
    ) -> None:
        """A fresh session for `user` (any older one of this browser is revoked first)."""
        await self.end(request, response)
        token = secrets.token_urlsafe(32)
        await self.store.create_session(
            user.id,
            hash_token(token),
            provider=provider,
            user_agent=request.headers.get("User-Agent", ""),
            ttl_s=SESSION_TTL_S,
        )
        self._set_cookie(response, SESSION_COOKIE, self._sessions.dumps(token), SESSION_TTL_S)

    def _signed_token(self, request: web.Request) -> str | None:
        """The session token of a cookie we signed (not yet looked up in the store)."""
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            token = self._sessions.loads(raw, max_age=SESSION_TTL_S)
        except BadSignature:
            return None
        return token if isinstance(token, str) else None

    def may_upload(self, request: web.Request) -> bool:
        """Cheap (no query): only a browser holding a session cookie of ours may send a form
        of upload size; anyone else's form body is held to the small routes' cap."""
        return self._signed_token(request) is not None

    async def find(self, request: web.Request) -> BrowserSession | None:
        token = self._signed_token(request)
        if token is None:
            return None
        key = hash_token(token)
        user = await self.store.session_user(key)
        return BrowserSession(user, key) if user else None

    async def end(self, request: web.Request, response: web.StreamResponse) -> None:
        """Revoke this browser's session server-side and drop its cookie."""
        key = request.get(SESSION_KEY)
        if key is None:
            found = await self.find(request)
            key = found.key if found else None
        if key is not None:
            await self.store.revoke_session(key)
        if SESSION_COOKIE in request.cookies:
            response.del_cookie(SESSION_COOKIE, path="/")

    # ---- the browser (before login): binds login CSRF tokens and OAuth flows ----

    def browser_id(self, request: web.Request) -> str | None:
        raw = request.cookies.get(BROWSER_COOKIE)
        if not raw:
            return None
        try:
            value = self._browsers.loads(raw, max_age=BROWSER_TTL_S)
        except BadSignature:
            return None
        return value if isinstance(value, str) else None

    @staticmethod
    def new_browser_id() -> str:
        return secrets.token_urlsafe(24)

    def set_browser(self, response: web.StreamResponse, browser: str) -> None:
        self._set_cookie(response, BROWSER_COOKIE, self._browsers.dumps(browser), BROWSER_TTL_S)

    # ---- CSRF ----

    def csrf_for(self, binding: bytes) -> str:
        return hmac.new(self._csrf_key, binding, hashlib.sha256).hexdigest()

    def csrf_for_session(self, key: bytes) -> str:
        return self.csrf_for(b"session:" + key)

    def csrf_for_browser(self, browser: str) -> str:
        return self.csrf_for(b"browser:" + browser.encode())

    @staticmethod
    def csrf_matches(expected: str | None, given: str | None) -> bool:
        return bool(expected and given) and hmac.compare_digest(str(expected), str(given))
