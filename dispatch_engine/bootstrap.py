"""Getting a process ready: find or start the servers, migrate, make the tokens a start needs.

Used by the CLI (`up`, `run`, `migrate`, `token`, `sender`) and by `dispatch_engine.testing`.
The servers are found in this order:
1. DATABASE_URL and REDIS_URL (both or neither: one alone is a settings error);
2. the private servers a running `up` owns on DISPATCH_DATA_DIR (`running_urls`);
3. private servers started for as long as the caller needs them (`EmbeddedServers`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg

from .auth import DEV_EMAIL
from .config import Settings, SettingsError
from .db import create_pool
from .embedded import EmbeddedServers, running_urls
from .migrate import migrate
from .senders import default_sender
from .store import Store


def _has_urls(settings: Settings) -> bool:
    """Whether both server URLs are set; SettingsError when only one is."""
    if bool(settings.database_url) != bool(settings.redis_url):
        missing = "REDIS_URL" if settings.database_url else "DATABASE_URL"
        raise SettingsError(f"{missing} must be set too (set both, or neither for local mode)")
    return bool(settings.database_url)


@contextlib.contextmanager
def servers_for(
    settings: Settings, *, may_start: bool = True, attach: bool = True
) -> Iterator[Settings]:
    """`settings` with server URLs: the configured ones, a running `up`'s (when `attach`), or
    private servers under DISPATCH_DATA_DIR while the block runs (when `may_start`)."""
    if _has_urls(settings):
        yield settings
        return
    urls = running_urls(settings.data_dir) if attach else None
    if urls is not None:
        yield settings.with_urls(urls.database_url, urls.redis_url)
        return
    if not may_start:
        raise SettingsError(
            "DATABASE_URL and REDIS_URL are not set and no `dispatch-engine up` runs on "
            f"DISPATCH_DATA_DIR={settings.data_dir}"
        )
    with EmbeddedServers(settings.data_dir) as servers:
        yield settings.with_urls(servers.urls.database_url, servers.urls.redis_url)


@contextlib.asynccontextmanager
async def private_servers_for(settings: Settings, folder: Path) -> AsyncIterator[Settings]:
    """For a caller inside an event loop: the configured servers, else private ones under
    `folder` (never a running `up`'s), started and stopped off the loop."""
    if _has_urls(settings):
        yield settings
        return
    servers = EmbeddedServers(folder)
    urls = await asyncio.to_thread(servers.start)
    try:
        yield settings.with_urls(urls.database_url, urls.redis_url)
    finally:
        await asyncio.to_thread(servers.stop)


@contextlib.asynccontextmanager
async def command_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A small pool for one short command, closed at the end."""
    assert settings.database_url, "resolve the servers first (servers_for)"
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def migrate_database(settings: Settings) -> list[str]:
    """Apply the pending migrations; returns the names of those applied."""
    async with command_pool(settings) as pool, pool.acquire() as conn:
        return await migrate(conn)


async def create_api_token(
    settings: Settings, email: str, name: str, expires_in_s: int | None = None
) -> str:
    """A new bearer token for EMAIL (the user and its default sender are made if new)."""
    async with command_pool(settings) as pool:
        store = Store(pool)
        user = await store.ensure_user(email)
        await default_sender(store, user, settings)
        made = await store.issue_token(user.id, name, expires_in_s=expires_in_s)
        assert made is not None  # the operator's CLI has no per-user cap
        return made.token


async def dev_token(settings: Settings) -> str:
    """The local dev user's token, kept in the data folder and reused while valid.

    The dev user's default sender follows this start's DISPATCH_TRANSPORT and
    MAX_EMAILS_PER_HOUR, so changing them and restarting `up` does what one expects.
    """
    path = settings.data_dir / "dev_token"
    kept = path.read_text().strip() if path.exists() else ""
    async with command_pool(settings) as pool:
        store = Store(pool)
        user = await store.ensure_user(DEV_EMAIL, "Dev User")
        sender = await default_sender(store, user, settings)
        await store.save_sender(
            user.id,
            sender.id,
            {"transport": settings.transport, "hourly_limit": settings.max_emails_per_hour},
        )
        if kept and await store.user_for_token(kept):
            return kept
        token = await store.create_token(user.id, "dispatch-engine up")
    path.write_text(token)
    path.chmod(0o600)
    return token
