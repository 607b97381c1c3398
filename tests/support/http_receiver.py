"""A real HTTP server on loopback that records every request and answers as a test says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived

    def json(self) -> Any:
        return orjson.loads(self.body)


Answer = tuple[int, dict[str, str]]  # status, headers


class Receiver:
    """`async with Receiver() as receiver:` then POST to `receiver.url`; `respond` decides."""

    def __init__(
        self,
        respond: Callable[[Received], Answer] | None = None,
        hold: asyncio.Event | None = None,
    ) -> None:
        self.requests: list[Received] = []
        self.respond: Callable[[Received], Answer] = respond or (lambda _: (200, {}))
        self.hold = hold  # when given, every answer waits until it is set
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        received = Received(request.path, dict(request.headers), await request.read(), time.time())
        self.requests.append(received)
        if self.hold is not None:
            await self.hold.wait()
        status, headers = self.respond(received)
        return web.Response(status=status, headers=headers, text=f"answer {status}")

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
