"""Real PostgreSQL and Redis for every test: private ones by default (the appliance's own
mechanism), or the servers named by DISPATCH_TEST_DATABASE_URL / DISPATCH_TEST_REDIS_URL."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from redis.asyncio import Redis

from dispatch_engine.config import Settings
from dispatch_engine.db import create_pool
from dispatch_engine.embedded import EmbeddedServers
from dispatch_engine.migrate import migrate
from dispatch_engine.queue import RedisQueue
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.processes import kill_leftovers
from .support.tiers import assign

if TYPE_CHECKING:
    from playwright.async_api import Browser

TABLES = (
    "captured_messages, ledger, dispatches, sequence_members, campaigns, senders, api_tokens,"
    " identities, users"
)


@pytest.hookimpl(tryfirst=True)  # before `-m unit` (etc.) deselects by the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test gets its tier's marker (tests/support/tiers.py, docs/testing.md)."""
    for item in items:
        assign(item)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(database_url, redis_url) of servers the whole session uses."""
    db_url = os.environ.get("DISPATCH_TEST_DATABASE_URL")
    redis_url = os.environ.get("DISPATCH_TEST_REDIS_URL")
    if db_url and redis_url:
        yield db_url, redis_url
        return
    with EmbeddedServers(tmp_path_factory.mktemp("servers")) as embedded:
        yield db_url or embedded.urls.database_url, redis_url or embedded.urls.redis_url


@pytest.fixture(scope="session")
async def urls(servers: tuple[str, str]) -> AsyncIterator[tuple[str, str]]:
    """A fresh, migrated database of our own on the session's server (dropped at the end)."""
    admin_url, redis_url = servers
    name = f"dispatch_test_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = _with_database(admin_url, name)
    conn = await asyncpg.connect(database_url)
    await migrate(conn)
    await conn.close()
    yield database_url, redis_url
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """A test that fails before stopping its `dispatch-engine` processes does not leak them."""
    yield
    kill_leftovers()


@pytest.fixture
async def empty_database(servers: tuple[str, str]) -> AsyncIterator[str]:
    """URL of a brand-new, unmigrated database on the session's server (dropped after)."""
    admin_url = servers[0]
    name = f"dispatch_empty_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(admin_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def clean(urls: tuple[str, str]) -> AsyncIterator[None]:
    """Empty tables and Redis before a test."""
    conn = await asyncpg.connect(urls[0])
    await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    await conn.close()
    redis = Redis.from_url(urls[1])
    await redis.flushdb()
    await redis.aclose()
    yield


@pytest.fixture
def settings(urls: tuple[str, str], tmp_path: Path, clean: None) -> Settings:
    return Settings(
        database_url=urls[0],
        redis_url=urls[1],
        data_dir=tmp_path,
        secret_key="test-secret-key-0123456789",
        max_emails_per_hour=1_000_000,
        lease_seconds=5,
        worker_concurrency=50,
        port=0,
        allow_private_targets=True,  # the peers listen on loopback; test_outbound.py turns it off
    )


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """Environment for a `dispatch-engine` subprocess against the test servers."""
    assert settings.database_url and settings.redis_url
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "DISPATCH_DATA_DIR": str(settings.data_dir),
        "DISPATCH_SECRET_KEY": settings.secret_key,
        "MAX_EMAILS_PER_HOUR": str(settings.max_emails_per_hour),
        "DISPATCH_LEASE_SECONDS": str(settings.lease_seconds),
        "DISPATCH_HOST": "127.0.0.1",
        "DISPATCH_PORT": "0",
    }


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    assert settings.database_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=10)
    yield pool
    await pool.close()


@pytest.fixture
def store(pool: asyncpg.Pool) -> Store:
    return Store(pool)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    assert settings.redis_url
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def queue(redis: Redis, settings: Settings) -> RedisQueue:
    return RedisQueue(redis, lease_ms=settings.lease_seconds * 1000)


def fast(settings: Settings, **changes: object) -> Settings:
    return replace(settings, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def make_client(settings: Settings) -> AsyncIterator[Start]:
    """Start the real app (all roles unless told) and return its test client (closed after)."""
    from aiohttp.test_utils import TestClient, TestServer

    from dispatch_engine.app import create_app

    clients: list[AppClient] = []

    async def start(
        app_settings: Settings | None = None, roles: Iterable[str] | None = None
    ) -> AppClient:
        app = create_app(app_settings or settings, roles or {"api", "worker", "sweeper"})
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in reversed(clients):
        await client.close()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the session (tests/support/browser.py); closed at the end."""
    from .support.browser import chromium

    async with chromium() as launched:
        yield launched
