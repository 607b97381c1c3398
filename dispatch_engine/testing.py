"""A real Dispatch Engine for a plugin's own tests.

    from dispatch_engine.testing import appliance

    async def test_my_transport_sends() -> None:
        async with appliance(transport="my_transport") as app:
            campaign = await app.schedule(subject="Hi", body="Hello", recipients=["a@example.com"])
            await app.wait_for_campaign(campaign["id"])

`appliance()` starts a private PostgreSQL and Redis (the appliance's own servers, in a
temporary folder), applies the migrations, runs every role on a free loopback port with the
capture transport, and signs in a user with an API token. Installed plugins load through
their entry points as in production; `plugins=[module]` registers more, ahead of the built-ins.
Senders may reach private addresses (`allow_private_targets=True`): test peers are on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .app import create_app
from .bootstrap import create_api_token, migrate_database, private_servers_for
from .config import Settings
from .store import Store
from .web.app_keys import PLUGINS, STORE


class ApplianceError(AssertionError):
    """The appliance answered something other than what a test expected."""


@dataclass
class Appliance:
    url: str  # http://127.0.0.1:<port>
    token: str  # an API token of `email`
    email: str
    settings: Settings
    app: web.Application
    http: aiohttp.ClientSession  # relative URLs, already authenticated

    @property
    def store(self) -> Store:
        return self.app[STORE]

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API and return its JSON; a 4xx/5xx answer raises ApplianceError."""
        async with self.http.request(method, path, **kwargs) as response:
            if response.status >= 400:
                raise ApplianceError(f"{method} {path}: {response.status} {await response.text()}")
            return await response.json()

    async def schedule(self, **fields: Any) -> dict[str, Any]:
        """POST /api/emails/schedule with `fields` as JSON; returns the campaign."""
        answer = await self.request("POST", "/api/emails/schedule", json=fields)
        campaign: dict[str, Any] = answer["campaign"]
        return campaign

    async def inbox(self) -> list[dict[str, Any]]:
        """What the capture transport received (newest first)."""
        items: list[dict[str, Any]] = (await self.request("GET", "/api/inbox"))["items"]
        return items

    async def wait_for(
        self, check: Callable[[], Awaitable[bool]], within: float = 30.0, every: float = 0.05
    ) -> None:
        """Poll `check` until it is true; ApplianceError after `within` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not await check():
            if loop.time() > deadline:
                raise ApplianceError(f"condition not reached within {within} s")
            await asyncio.sleep(every)

    async def wait_for_campaign(
        self, campaign_id: int, status: str = "completed", within: float = 30.0
    ) -> dict[str, Any]:
        """Wait until the campaign has `status`; returns GET /api/campaigns/{id}."""
        detail: dict[str, Any] = {}

        async def reached() -> bool:
            nonlocal detail
            detail = await self.request("GET", f"/api/campaigns/{campaign_id}")
            return bool(detail["status"] == status)

        await self.wait_for(reached, within)
        return detail


@contextlib.asynccontextmanager
async def appliance(
    *, plugins: Iterable[object] = (), email: str = "tester@example.com", **changes: Any
) -> AsyncIterator[Appliance]:
    """Start a whole appliance; `changes` override Settings fields (e.g. `pacing=(...)`).

    Pass `database_url` and `redis_url` (both) to use running servers instead of private ones
    (the appliance migrates that database; it does not empty it).
    """
    with tempfile.TemporaryDirectory(prefix="dispatch-engine-test-") as folder:
        data_dir = Path(folder)
        base = Settings(
            data_dir=data_dir,
            secret_key=secrets.token_urlsafe(32),
            transport="capture",
            host="127.0.0.1",
            port=0,
            max_emails_per_hour=1_000_000,
            allow_private_targets=True,  # a plugin's test peers listen on loopback
        )
        async with private_servers_for(replace(base, **changes), data_dir / "servers") as settings:
            await migrate_database(settings)
            token = await create_api_token(settings, email, "dispatch_engine.testing")
            app = create_app(settings)
            for plugin in plugins:
                if not app[PLUGINS].is_registered(plugin):  # installed ones are already in
                    app[PLUGINS].register(plugin)
            app[PLUGINS].check_pending()
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            try:
                site = web.TCPSite(runner, settings.host, 0)
                await site.start()
                url = f"http://{settings.host}:{runner.addresses[0][1]}"
                headers = {"Authorization": f"Bearer {token}"}
                async with aiohttp.ClientSession(base_url=url, headers=headers) as http:
                    yield Appliance(url, token, email, settings, app, http)
            finally:
                await runner.cleanup()
