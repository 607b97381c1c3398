"""Running a long-lived process: the event loop, serving the app, stopping on a signal."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import click
from aiohttp import web

from ..config import SettingsError


def run_forever(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived process on uvloop when it is installed (the `uvloop` extra)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


async def serve(
    app: web.Application, host: str, port: int, on_ready: Callable[[int], None]
) -> None:
    """Serve until SIGINT/SIGTERM, then shut down in order (workers drain, pools close)."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise SettingsError(f"DISPATCH_PORT {port} on {host} cannot be used: {exc}") from None
        bound = runner.addresses[0][1] if runner.addresses else port
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        on_ready(bound)
        await stop.wait()
        click.echo("Stopping: finishing in-flight sends…", err=True)
    finally:
        await runner.cleanup()
