"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from dispatch_engine.store import Store

T = TypeVar("T")
POLL_S = 0.05  # how often a wait looks again: a condition, never a fixed pause


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_token(store: Store, email: str = "ada@example.com") -> str:
    user = await store.ensure_user(email, "Ada")
    return await store.create_token(user.id, "test")


async def wait_for(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    """Poll `check` until it is true; fail after `within` seconds (a hang, not a timing)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached within {within} s")
        await asyncio.sleep(POLL_S)


def poll_until(check: Callable[[], T | None], within: float, failure: Callable[[], str]) -> T:
    """The synchronous `wait_for`, for a process or a server outside the event loop: poll
    `check` until it answers; fail after `within` seconds with `failure()` (a hang)."""
    deadline = time.monotonic() + within
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(failure())
        time.sleep(POLL_S)
    return found


def just_after_next_window(window_s: float) -> str:
    """An ISO start time 0.3 s into the next rate window.

    Tests bucket sends by `sent_at`, taken when a result is recorded a few ms after the
    pacing decision: a first send decided at a window's very end would otherwise be
    counted in the next window by the test (not by the limiter).
    """
    opens = (time.time() // window_s + 1) * window_s + 0.3
    return datetime.fromtimestamp(opens, UTC).isoformat()
