"""Apply numbered `.sql` migrations in order, once each, under an advisory transaction lock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .db import Conn

# Any fixed 64-bit number; every process that migrates takes the same lock.
MIGRATION_LOCK_ID = 0x4469737061746368
MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # package data
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class SchemaBehindError(RuntimeError):
    """The database lacks migrations this code needs."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def available_migrations(folder: Path | None = None) -> list[Migration]:
    folder = folder or MIGRATIONS
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name!r} must be named NNNN_words.sql")
        found.append(Migration(int(match.group(1)), path.stem, path))
    versions = [m.version for m in found]
    # Gaps are allowed: parallel branches reserve their numbers and land in any order.
    if len(set(versions)) != len(versions) or 0 in versions:
        raise ValueError(f"migration numbers must be unique and start at 1, found {versions}")
    return found


async def _ensure_table(conn: Conn) -> None:
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version integer PRIMARY KEY,
               name text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )


async def migrate(conn: Conn, folder: Path | None = None) -> list[str]:
    """Apply what is missing; returns the names applied. Safe to run from many processes."""
    applied: list[str] = []
    for migration in available_migrations(folder):
        async with conn.transaction():
            # Waits for a concurrent migrator instead of skipping: nobody runs on an old schema.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
            await _ensure_table(conn)
            done = await conn.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
            )
            if done:
                continue
            await conn.execute(migration.path.read_text())
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration.name)
    return applied


async def pending_migrations(conn: Conn) -> list[str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done: set[int] = set()
    if exists:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m.name for m in available_migrations() if m.version not in done]


async def require_current_schema(conn: Conn) -> None:
    pending = await pending_migrations(conn)
    if pending:
        raise SchemaBehindError(
            f"the database schema is behind ({len(pending)} migration(s) pending: "
            f"{', '.join(pending)}); run `dispatch-engine migrate` first"
        )
