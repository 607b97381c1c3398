"""Stopping background tasks for sure."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(*tasks: asyncio.Task[None], within: float = 10.0) -> None:
    """Cancel tasks and wait until they are done.

    Cancellation is sent again until each task ends: a library that swallows one
    CancelledError (some client versions do, mid-command) must not keep a loop alive and
    hang the shutdown.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pending = [t for t in tasks if not t.done()]
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)
        pending = [t for t in pending if not t.done()]
    if not pending:
        await asyncio.gather(*tasks, return_exceptions=True)  # collect their exceptions
