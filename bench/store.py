"""The worker's PostgreSQL path per email, as the tables grow, by plan-cache mode.

    .venv/bin/python bench/store.py [--n 5000] [--rounds 4] [--record-batch 10]

Each round schedules one campaign of N emails (CampaignService, as the API does), then walks
it the way WorkerPool does: `load_jobs` + `begin_sends` per claimed batch (--claim-batch),
`record_outcomes` + `update_campaign_progress` per group commit (--record-batch; bench/e2e.py
prints the size the worker really reaches, ~10-15 at 1,000 emails/s). It prints the time per
email of each step, round by round, so a cost that grows with the size of `ledger` or
`dispatches` shows up as a rising row.

Every mode gets a fresh database on the same server (a private one from
dispatch_engine.embedded unless --database-url is given), with `plan_cache_mode` set on the
database: `auto` is PostgreSQL's default and what dispatch-engine runs with today.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import arguments
import asyncpg
import harness
from harness import table
from redis.asyncio import Redis

from dispatch_engine.campaigns import CampaignService, parse_schedule_request
from dispatch_engine.db import create_pool
from dispatch_engine.message_ids import message_id_for
from dispatch_engine.migrate import migrate
from dispatch_engine.models import DispatchStatus
from dispatch_engine.queue import RedisQueue
from dispatch_engine.store import SendOutcome, Store

STEPS = ("load_jobs", "begin_sends", "record_outcomes", "update_campaign_progress")


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def fresh_database(admin_url: str, mode: str) -> str:
    name = f"dispatch_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.execute(f"ALTER DATABASE \"{name}\" SET plan_cache_mode = '{mode}'")
    finally:
        await admin.close()
    conn = await asyncpg.connect(with_database(admin_url, name))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return name


async def drop_database(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def walk(
    args: argparse.Namespace, database_url: str, redis_url: str
) -> list[dict[str, float]]:
    """Per round: seconds spent in each step (and the ledger's size before the round)."""
    pool = await create_pool(database_url, min_size=1, max_size=4)
    redis = Redis.from_url(redis_url)
    rounds: list[dict[str, float]] = []
    try:
        store = Store(pool)
        service = CampaignService(store, RedisQueue(redis))
        user = await store.ensure_user("bench@example.com")
        sender = await store.ensure_default_sender(user, transport="smtp", hourly_limit=10_000_000)
        for n in range(args.rounds):
            if args.analyze_between and n > 0:
                await pool.execute("ANALYZE")  # what autovacuum does, eventually
            request = parse_schedule_request(
                {
                    "subject": "Benchmark {{ email }}",
                    "body": "Hello {{ email }}",
                    "recipients": [f"r{n}-{i}@example.com" for i in range(args.n)],
                },
                now=datetime.now(UTC),
            )
            result = await service.schedule(
                user, request, default_sender=sender, idempotency_header=None
            )
            ids = [
                r["id"]
                for r in await pool.fetch(
                    "SELECT id FROM dispatches WHERE campaign_id = $1 ORDER BY id",
                    result.campaign_id,
                )
            ]
            spent: dict[str, float] = defaultdict(float)
            spent["ledger_rows"] = float(await pool.fetchval("SELECT count(*) FROM ledger"))
            for start in range(0, len(ids), args.claim_batch):
                t = time.perf_counter()
                jobs = await store.load_jobs(ids[start : start + args.claim_batch])
                spent["load_jobs"] += time.perf_counter() - t
                mids = [message_id_for(j.idempotency_key, sender.from_address) for j in jobs]
                t = time.perf_counter()
                await store.begin_sends(
                    [j.id for j in jobs], mids, ["smtp"] * len(jobs), f"bench:{start}"
                )
                spent["begin_sends"] += time.perf_counter() - t
                for k in range(0, len(jobs), args.record_batch):
                    outcomes = [
                        SendOutcome(
                            j.id,
                            j.idempotency_key,
                            DispatchStatus.SENT,
                            j.campaign_id,
                            j.recipient,
                            mid,
                            "250 2.0.0 OK",
                        )
                        for j, mid in zip(
                            jobs[k : k + args.record_batch],
                            mids[k : k + args.record_batch],
                            strict=True,
                        )
                    ]
                    t = time.perf_counter()
                    await store.record_outcomes(outcomes)
                    spent["record_outcomes"] += time.perf_counter() - t
                    t = time.perf_counter()
                    await store.update_campaign_progress([result.campaign_id])
                    spent["update_campaign_progress"] += time.perf_counter() - t
            rounds.append(spent)
            total = sum(spent[s] for s in STEPS)
            print(
                f"  {args.mode_label}: round {n + 1}/{args.rounds}: "
                f"{1e6 * total / args.n:,.0f} µs per email",
                file=sys.stderr,
            )
    finally:
        await redis.aclose()
        await pool.close()
    return rounds


async def bench(args: argparse.Namespace, admin_url: str, redis_url: str) -> None:
    results: dict[str, list[dict[str, float]]] = {}
    for mode in args.modes:
        name = await fresh_database(admin_url, mode)
        args.mode_label = mode
        try:
            results[mode] = await walk(args, with_database(admin_url, name), redis_url)
        finally:
            await drop_database(admin_url, name)
    conn = await asyncpg.connect(admin_url)
    version = await conn.fetchval("SHOW server_version")
    await conn.close()

    rows = [["plan_cache_mode", "round", "ledger rows before", *STEPS, "total"]]
    for mode, rounds in results.items():
        for n, spent in enumerate(rounds):
            total = sum(spent[s] for s in STEPS)
            rows.append(
                [
                    mode,
                    str(n + 1),
                    f"{spent['ledger_rows']:,.0f}",
                    *(f"{1e6 * spent[s] / args.n:,.0f}" for s in STEPS),
                    f"{1e6 * total / args.n:,.0f}",
                ]
            )
    print()
    print(
        f"µs of wall time per email (client side, loopback), campaign of {args.n:,} per round, "
        f"claim batch {args.claim_batch}, group commit of {args.record_batch}"
        f"{', ANALYZE between rounds' if args.analyze_between else ''}; "
        f"PostgreSQL {version}; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print()
    print(table(rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arguments.parser(__doc__)
    parser.add_argument("--n", type=int, default=5000, help="emails per campaign (round)")
    parser.add_argument("--rounds", type=int, default=4, help="campaigns, one after another")
    parser.add_argument("--claim-batch", type=int, default=100, help="ids per claim")
    parser.add_argument("--record-batch", type=int, default=10, help="outcomes per commit")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["auto", "force_custom_plan"],
        choices=["auto", "force_custom_plan", "force_generic_plan"],
        help="plan_cache_mode values to compare (default: auto force_custom_plan)",
    )
    parser.add_argument(
        "--analyze-between",
        action="store_true",
        help="ANALYZE between rounds (as autovacuum eventually does): invalidates cached plans",
    )
    arguments.add_servers(
        parser,
        database="PostgreSQL to create scratch databases on",
        redis="Redis for CampaignService (with --database-url; a scratch one: the ids stay queued)",
    )
    return arguments.parse(parser, argv, positive=("n", "rounds", "claim_batch", "record_batch"))


def main() -> None:
    args = parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="dispatch-store-") as tmp,
        harness.private_servers(Path(tmp), args.database_url, args.redis_url) as srv,
    ):
        asyncio.run(bench(args, srv.database_url, srv.redis_url))


if __name__ == "__main__":
    main()
