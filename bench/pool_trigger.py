"""The dispatch check trigger before and after mailbox pools (migration 0020), on a COPY.

    .venv/bin/python bench/pool_trigger.py [--n 100000] [--repeat 5]

A fresh database gets every migration but 0020 (the trigger of 0005: the dispatch's sender
must be its campaign's), one campaign's N dispatch rows are COPYed in a transaction that is
rolled back, --repeat times; then 0020 is applied (the sender may be any of the campaign's
pool) and the same COPY is timed with one sender, and with the rows spread over a pool of 50.
Prints the median wall time of the COPY (client side, loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import arguments
import asyncpg
import harness

import dispatch_engine
from dispatch_engine.migrate import migrate

FOLDER = Path(dispatch_engine.__file__).parent / "migrations"
COLUMNS = ["id", "campaign_id", "owner_id", "sender_id", "recipient", "vars", "scheduled_at",
           "idempotency_key"]  # fmt: skip


async def _copy_once(
    conn: asyncpg.Connection, campaign: int, owner: int, senders: list[int], n: int
) -> float:
    now = datetime.now(UTC)
    base = await conn.fetchval("SELECT nextval('dispatches_id_seq')")
    rows = [
        (base + i, campaign, owner, senders[i % len(senders)], f"r{i}@example.com", "{}", now,
         hashlib.sha256(f"{campaign}:{i}:{secrets.token_hex(4)}".encode()).digest())
        for i in range(n)
    ]  # fmt: skip
    tr = conn.transaction()
    await tr.start()
    try:
        started = time.perf_counter()
        await conn.copy_records_to_table("dispatches", columns=COLUMNS, records=rows)
        return time.perf_counter() - started
    finally:
        await tr.rollback()


async def _setup(conn: asyncpg.Connection, pool: bool) -> tuple[int, int, list[int]]:
    owner = await conn.fetchval(
        "INSERT INTO users (email, name) VALUES ($1, 'b') RETURNING id",
        f"{secrets.token_hex(4)}@example.com",
    )
    senders = [
        await conn.fetchval(
            """INSERT INTO senders (owner_id, from_address, display_name, transport,
                                    hourly_limit) VALUES ($1, $2, '', 'capture', 100)
               RETURNING id""",
            owner,
            f"s{i}@example.com",
        )
        for i in range(50 if pool else 1)
    ]
    campaign = await conn.fetchval(
        """INSERT INTO campaigns (owner_id, sender_id, subject, body_text, start_at, total)
           VALUES ($1, $2, 's', 'b', now(), 0) RETURNING id""",
        owner,
        senders[0],
    )
    if pool:
        await conn.executemany(
            "INSERT INTO campaign_senders (campaign_id, sender_id, position) VALUES ($1, $2, $3)",
            [(campaign, s, i) for i, s in enumerate(senders)],
        )
    return campaign, owner, senders


def _function_of(migration: str) -> str:
    """The CREATE FUNCTION dispatches_check_campaign statement of a migration file."""
    text = (FOLDER / migration).read_text()
    start = text.index("FUNCTION dispatches_check_campaign()")
    end = text.index("END $$;", start) + len("END $$;")
    return "CREATE OR REPLACE " + text[start:end]


async def bench(url: str, n: int, repeat: int) -> None:
    admin = await asyncpg.connect(url)
    name = f"pool_bench_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    db_url = url.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(db_url)
    old = _function_of("0005_dispatch_checks_per_statement.sql")
    new = _function_of(next(p.name for p in FOLDER.glob("0020_*.sql")))
    variants = {  # label: (function, pool?, trigger on?)
        "no check (trigger off)": (new, False, False),
        "0005: the campaign's sender": (old, False, True),
        "0020: the pool's, one sender": (new, False, True),
        "0020: the pool's, 50 senders": (new, True, True),
    }
    times: dict[str, list[float]] = {label: [] for label in variants}
    try:
        await migrate(conn, FOLDER)
        setups = {label: await _setup(conn, pool) for label, (_, pool, _) in variants.items()}
        for _ in range(repeat):  # interleaved: a busy machine slows every variant alike
            for label, (function, _, on) in variants.items():
                await conn.execute(function)
                state = "ENABLE" if on else "DISABLE"
                await conn.execute(
                    f"ALTER TABLE dispatches {state} TRIGGER dispatches_check_campaign"
                )
                campaign, owner, senders = setups[label]
                times[label].append(await _copy_once(conn, campaign, owner, senders, n))
        await conn.execute(new)
        await conn.execute("ALTER TABLE dispatches ENABLE TRIGGER dispatches_check_campaign")
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{name}"')
        await admin.close()
    print(f"\nCOPY of {n:,} dispatch rows, median of {repeat} (interleaved), PostgreSQL {version}")
    rows = [["check", "COPY ms (median)", "min"]]
    for label, spent in times.items():
        rows.append([label, f"{statistics.median(spent) * 1000:,.0f}", f"{min(spent) * 1000:,.0f}"])
    print(harness.table(rows))


def main() -> None:
    parser = arguments.parser(__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", default=None)
    args: argparse.Namespace = parser.parse_args()
    if args.database_url:
        asyncio.run(bench(args.database_url, args.n, args.repeat))
        return
    with tempfile.TemporaryDirectory() as tmp, harness.private_servers(Path(tmp)) as servers:
        asyncio.run(bench(servers.database_url, args.n, args.repeat))


if __name__ == "__main__":
    main()
