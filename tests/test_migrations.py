"""Migrations: applied once each, safe from concurrent processes, and a behind schema refuses
to run with a message that says what to do."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from dispatch_engine.migrate import (
    MIGRATION_LOCK_ID,
    SchemaBehindError,
    available_migrations,
    migrate,
    require_current_schema,
)

from .support.helpers import wait_for

CLI = str(Path(sys.executable).with_name("dispatch-engine"))
TABLES = {
    "users",
    "identities",
    "api_tokens",
    "senders",
    "campaigns",
    "dispatches",
    "ledger",
    "captured_messages",
}
# The indexes behind the dashboard's keyset-paginated lists.
LISTING_INDEXES = {
    "dispatches_owner_queued",
    "dispatches_owner_finished",
    "campaigns_owner_list",
    "captured_messages_owner",
}
# Variables a `dispatch-engine` subprocess must not inherit from the caller.
_OWN_VARIABLES = ("DATABASE_URL", "REDIS_URL", "DISPATCH_", "MAX_EMAILS", "SMTP_", "WORKER_")


def cli_env(database_url: str, redis_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_VARIABLES)}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DISPATCH_DATA_DIR=str(data_dir),
        DISPATCH_HOST="127.0.0.1",
        DISPATCH_PORT="0",
    )
    return env


async def applied_versions(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [r["version"] for r in rows]


async def test_migrating_twice_applies_each_migration_once(empty_database: str) -> None:
    expected = [m.version for m in available_migrations()]
    assert expected, "no migrations found"
    conn = await asyncpg.connect(empty_database)
    try:
        first = await migrate(conn)
        second = await migrate(conn)
        assert first == [m.name for m in available_migrations()]
        assert second == []
        assert await applied_versions(conn) == expected

        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert tables >= TABLES | {"schema_migrations"}
        indexes = {
            r["indexname"]
            for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
            )
        }
        assert indexes >= LISTING_INDEXES
        await require_current_schema(conn)  # a migrated schema is accepted
    finally:
        await conn.close()


async def test_two_processes_migrating_at_once_both_succeed(
    empty_database: str, servers: tuple[str, str], tmp_path: Path
) -> None:
    env = cli_env(empty_database, servers[1], tmp_path)
    # Hold the migration lock so both processes are provably waiting on it at the same time.
    holder = await asyncpg.connect(empty_database)
    procs: list[asyncio.subprocess.Process] = []
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        for _ in range(2):
            procs.append(
                await asyncio.create_subprocess_exec(
                    CLI,
                    "migrate",
                    env=env,
                    cwd=tmp_path,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            )

        async def both_waiting() -> bool:
            waiting = await holder.fetchval(
                """SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                   WHERE l.locktype = 'advisory' AND NOT l.granted
                     AND d.datname = current_database()"""
            )
            if waiting < 2:
                assert all(p.returncode is None for p in procs), "a migrator exited early"
            return bool(waiting == 2)

        await wait_for(both_waiting, within=60)
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        outputs = await asyncio.wait_for(
            asyncio.gather(*(p.communicate() for p in procs)), timeout=120
        )
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        await holder.close()

    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
    # Each migration was applied by exactly one of the two processes.
    names = [m.name for m in available_migrations()]
    applied: list[str] = []
    for out, _ in outputs:
        text = out.decode().strip()
        if text.startswith("Applied: "):
            applied += text.removeprefix("Applied: ").split(", ")
        else:
            assert text == "The schema is up to date.", text
    assert sorted(applied) == sorted(names)

    conn = await asyncpg.connect(empty_database)
    try:
        assert await applied_versions(conn) == [m.version for m in available_migrations()]
        assert await conn.fetchval("SELECT to_regclass('dispatches') IS NOT NULL")
    finally:
        await conn.close()


async def test_require_current_schema_on_empty_database_says_to_migrate(
    empty_database: str,
) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        with pytest.raises(SchemaBehindError, match="dispatch-engine migrate"):
            await require_current_schema(conn)
    finally:
        await conn.close()


async def test_run_without_migrate_on_empty_database_exits_with_one_line(
    empty_database: str, servers: tuple[str, str], tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        CLI,
        "run",
        "--no-migrate",
        env=cli_env(empty_database, servers[1], tmp_path),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # A process that does not refuse would serve forever: that is a hang, not a timing.
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = err.decode()
    assert proc.returncode != 0
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "dispatch-engine migrate" in lines[0]

    conn = await asyncpg.connect(empty_database)
    try:  # --no-migrate means it left the database alone
        assert await conn.fetchval("SELECT to_regclass('dispatches') IS NULL")
    finally:
        await conn.close()
