"""The types behind the `make_client` fixture: the real app in this process and its client."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeAlias

from aiohttp import web
from aiohttp.test_utils import TestClient

from dispatch_engine.config import Settings

AppClient: TypeAlias = TestClient[web.Request, web.Application]


class Start(Protocol):
    """`make_client`: starts the real app with these settings (the test's own unless given)
    and roles (all unless given); the client is closed after the test."""

    async def __call__(
        self, app_settings: Settings | None = None, roles: Iterable[str] | None = None
    ) -> AppClient: ...
