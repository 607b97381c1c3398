"""What a login provider plugin works with: its spec, the identity it returns, its context.

Providers are plugins (`register_auth_providers`); the core (`web/auth.py`) turns the
identity they verified into a user and a session. See docs/dashboard.md.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from redis.asyncio import Redis

from .config import Settings
from .redis_keys import login_flow_key

DEV_EMAIL = "dev@example.com"  # the local dev user: `up` prints a token for it
FLOW_TTL_S = 600  # a login started and not finished within ten minutes must start again


class AuthError(Exception):
    """A login was refused; the message is shown to the person on the login page."""


@dataclass(frozen=True)
class LoginIdentity:
    """Who the provider says this is. `provider` + `subject` identify them for good."""

    provider: str
    subject: str
    email: str
    email_verified: bool = False
    name: str = ""
    avatar_url: str | None = None


class LoginFlows:
    """One-time, server-side state of logins in progress (Redis, with an expiry).

    A flow is bound to the browser that started it and can be taken once: a replayed or
    forged callback finds nothing.
    """

    def __init__(self, redis: Redis, browser: str, next_path: str = "/") -> None:
        self.redis = redis
        self.browser = browser
        self.next_path = next_path  # kept with the flow; restored by `take`

    def _key(self, state: str) -> str:
        # Keyed by browser too: a callback from another browser finds nothing and leaves
        # the real flow intact.
        digest = hashlib.sha256(f"{self.browser}\x00{state}".encode()).hexdigest()
        return login_flow_key(digest)

    async def start(self, data: dict[str, Any]) -> str:
        """Keep `data` and return the random `state` that finds it again."""
        state = secrets.token_urlsafe(32)
        value = orjson.dumps({"next": self.next_path, "data": data})
        await self.redis.set(self._key(state), value, ex=FLOW_TTL_S)
        return state

    async def take(self, state: str) -> dict[str, Any] | None:
        """The flow's data, once; None when unknown, expired, used or from another browser."""
        if not self.browser or not state or len(state) > 200:
            return None
        raw = await self.redis.getdel(self._key(state))
        if raw is None:
            return None
        flow = orjson.loads(raw)
        self.next_path = str(flow.get("next") or "/")
        data: dict[str, Any] = flow["data"]
        return data


@dataclass(frozen=True)
class AuthContext:
    settings: Settings
    http: aiohttp.ClientSession
    flows: LoginFlows
    callback_url: str  # absolute URL of /auth/<name>/callback on this deployment


StartHandler = Callable[[web.Request, AuthContext], Awaitable["LoginIdentity | web.StreamResponse"]]
CallbackHandler = Callable[[web.Request, AuthContext], Awaitable[LoginIdentity]]


@dataclass(frozen=True)
class AuthProviderSpec:
    name: str  # URL segment: /auth/<name>/start and /auth/<name>/callback
    label: str  # the login button's text
    start: StartHandler
    callback: CallbackHandler | None = None
    description: str = ""
