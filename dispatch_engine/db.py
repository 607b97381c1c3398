"""The asyncpg pool: jsonb as Python objects via orjson."""

from __future__ import annotations

import asyncpg
import orjson

# What asyncpg hands out: a plain connection or a pool's proxy of one.
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary format (a version byte, then the JSON text) so COPY can write jsonb too.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda data: orjson.loads(data[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=60,
        # Generic plans cached while ledger/dispatches were small keep seq-scanning them as
        # they grow (measured: recording 3x slower at 15,000 rows); plan each call instead.
        server_settings={"plan_cache_mode": "force_custom_plan"},
    )
    assert pool is not None
    return pool
