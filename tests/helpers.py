"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dispatch_engine.store import Store


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
        await asyncio.sleep(0.05)
