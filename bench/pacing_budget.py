"""Pacing budget: the share of each window's budget used, and a cap that holds back only its own.

    .venv-bench/bin/python bench/pacing.py --scenario budget [--limit 20] [--window 3]

Issue 11's scenario, shortened. Each case runs `dispatch-engine run` (all roles, capture
transport) on new private PostgreSQL + Redis:
- one sender at --limit per window of --window s (MAX_EMAILS_PER_HOUR,
  DISPATCH_RATE_WINDOW_SECONDS), one campaign of 3.5 windows' worth of emails starting just
  after a window opens; `fixed_window` and `sliding_window`, each with a delay between
  emails (min-gap on: the window's budget fits in two thirds of the window) and without.
  Reported: grants per window as the policy itself recorded them in Redis, polled every
  100 ms during the run (fixed: its counter of each clock window; sliding: the grant times
  of its log, counted in windows from the first grant on) and each window's share of the
  budget (the last, partial window is left out; correct is 100 % in every full one); and
  the same by `dispatches.sent_at` (the group commit, later by the machine's load).
- one sender at 1,000 per 60 s window with two campaigns at once: A `hourly_limit: 3` (30
  emails), B no cap (20 emails). Reported: when B's last email went (seconds after its POST),
  how many of A went meanwhile, and until when A's others wait.
Nothing asserts: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness
from harness import Engine, table


async def _post(engine: Engine, token: str, payload: dict[str, Any]) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        answer = await harness.schedule(http, engine.url, token, payload)
    return int(answer["campaign"]["id"])


async def _sent_times(db: Any, campaign: int) -> list[float]:
    rows = await db.fetch(
        "SELECT sent_at FROM dispatches WHERE campaign_id = $1 AND sent_at IS NOT NULL"
        " ORDER BY sent_at",
        campaign,
    )
    return [r["sent_at"].timestamp() for r in rows]


async def _until(done: Any, deadline: float, poll_s: float) -> None:
    """Poll the database until `done()` or the deadline (the engine's results land there)."""
    while True:
        if await done() or time.time() > deadline:
            return
        await asyncio.sleep(poll_s)


def _windows(times: list[float], window_s: float, anchored: bool) -> list[int]:
    """Counts per window: clock windows, or (anchored) windows from the first time on."""
    if not times:
        return []
    start = min(times) if anchored else 0.0
    counts = Counter(int((t - start) // window_s) for t in times)
    return [counts.get(w, 0) for w in range(min(counts), max(counts) + 1)]


async def _poll_grants(redis: Any, prefix: str, window_s: int, seen: dict[str, float]) -> None:
    """The policy's own record: fixed counters (max seen per window), sliding grant times."""
    while True:
        now = time.time()
        for w in (int(now // window_s) - 1, int(now // window_s)):
            value = int(await redis.get(f"{prefix}w:{w}") or 0)
            seen[f"w:{w}"] = max(seen.get(f"w:{w}", 0), value)
        for member, score in await redis.zrange(f"{prefix}sl", 0, -1, withscores=True):
            # a member (a sequence number) is reused once the log expired: key by its time too
            seen[f"s:{member.decode()}:{score}"] = score / 1000
        await asyncio.sleep(0.1)


async def window_case(
    args: argparse.Namespace, tmp: Path, policy: str, gap: bool
) -> tuple[list[int], list[int]]:
    """(grants, sends by sent_at) per window of one campaign of 3.5 windows' worth."""
    import asyncpg
    from redis.asyncio import Redis

    from dispatch_engine.queue import shard_for

    n = args.limit * 7 // 2
    delay = (args.window * 1000 * 2 // 3) // args.limit if gap else 0
    with harness.private_servers(tmp / "servers") as srv:
        env = harness.engine_env(
            srv,
            tmp,
            DISPATCH_TRANSPORT="capture",
            MAX_EMAILS_PER_HOUR=args.limit,
            DISPATCH_RATE_WINDOW_SECONDS=args.window,
            DISPATCH_PACING=f"{policy},min_gap",
            DISPATCH_PLUGINS=None,
            DISPATCH_PLUGINS_DIR=None,
        )
        token = harness.create_token(env, tmp, "budget@example.com")
        engine = Engine(env, tmp)
        db = await asyncpg.connect(srv.database_url)
        redis = Redis.from_url(srv.redis_url)
        seen: dict[str, float] = {}
        poller = None
        try:
            engine.wait_ready()
            opens = (time.time() // args.window + 1) * args.window + 0.3
            campaign = await _post(
                engine,
                token,
                {
                    "subject": "Budget",
                    "body": "Hello {{ email }}",
                    "recipients": [f"b{i}@example.com" for i in range(n)],
                    "delay_between_ms": delay,
                    "start_at": datetime.fromtimestamp(opens, UTC).isoformat(),
                },
            )
            sender = await db.fetchval("SELECT sender_id FROM campaigns WHERE id = $1", campaign)
            prefix = f"{shard_for(sender, 1).pacing_prefix}{sender}:"
            poller = asyncio.create_task(_poll_grants(redis, prefix, args.window, seen))

            async def all_sent() -> bool:
                return bool(len(await _sent_times(db, campaign)) >= n)

            await _until(all_sent, time.time() + args.window * 8 + 30, 0.5)
            times = await _sent_times(db, campaign)
        finally:
            if poller is not None:
                poller.cancel()
            engine.stop()
            await redis.aclose()
            await db.close()
    if policy == "fixed_window":
        counters = {int(k[2:]): int(v) for k, v in seen.items() if k.startswith("w:") and v}
        grants = [counters.get(w, 0) for w in range(min(counters), max(counters) + 1)]
    else:
        grants = _windows([v for k, v in seen.items() if k.startswith("s:")], args.window, True)
    return grants, _windows(times, args.window, policy != "fixed_window")


async def cap_case(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import asyncpg

    with harness.private_servers(tmp / "servers") as srv:
        env = harness.engine_env(
            srv,
            tmp,
            DISPATCH_TRANSPORT="capture",
            MAX_EMAILS_PER_HOUR=1000,
            DISPATCH_RATE_WINDOW_SECONDS=60,
            DISPATCH_PACING=None,
            DISPATCH_PLUGINS=None,
            DISPATCH_PLUGINS_DIR=None,
        )
        token = harness.create_token(env, tmp, "caps@example.com")
        engine = Engine(env, tmp)
        db = await asyncpg.connect(srv.database_url)
        try:
            engine.wait_ready()
            t0 = time.time()
            capped = await _post(
                engine,
                token,
                {
                    "subject": "A",
                    "body": "Hello",
                    "hourly_limit": 3,
                    "recipients": [f"a{i}@example.com" for i in range(30)],
                },
            )
            free = await _post(
                engine,
                token,
                {
                    "subject": "B",
                    "body": "Hello",
                    "recipients": [f"f{i}@example.com" for i in range(20)],
                },
            )

            async def b_sent() -> bool:
                return len(await _sent_times(db, free)) >= 20

            await _until(b_sent, t0 + 70, 0.1)
            b_times = await _sent_times(db, free)
            a_times = await _sent_times(db, capped)
            until = await db.fetchval(
                "SELECT min(wait_until) FROM dispatches WHERE campaign_id = $1"
                " AND status = 'rate_limited' AND wait_reason = 'campaign_cap'",
                capped,
            )
        finally:
            engine.stop()
            await db.close()
    return {
        "b_sent": len(b_times),
        "b_last_s": (max(b_times) - t0) if b_times else float("nan"),
        "a_sent": len([t for t in a_times if not b_times or t <= max(b_times)]),
        "a_window_end": (int(t0) // 60 + 1) * 60,
        "a_waits_until": until.timestamp() if until else None,
    }


async def run(args: argparse.Namespace) -> None:
    rows = [["window", "min-gap", "grants / window (Redis)", "share, full windows", "sent_at"]]
    for policy in ("fixed_window", "sliding_window"):
        for gap in (True, False):
            with tempfile.TemporaryDirectory(prefix="dispatch-budget-") as name:
                per, by_sent_at = await window_case(args, Path(name), policy, gap)
            full = per[:-1] if len(per) > 1 else per
            shares = " ".join(f"{v / args.limit:.0%}" for v in full)
            delay = (args.window * 1000 * 2 // 3) // args.limit
            gap_text = f"{delay} ms" if gap else "off"
            counts = " ".join(map(str, per))
            rows.append([policy, gap_text, counts, shares, " ".join(map(str, by_sent_at))])
            print(f"  {policy}, gap {gap_text}: {per}, by sent_at {by_sent_at}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="dispatch-budget-") as name:
        cap = await cap_case(args, Path(name))
    print()
    print(
        f"one sender at {args.limit} per {args.window} s window, {args.limit * 7 // 2} emails "
        f"starting just after a window opens; dispatch_engine at {harness.revision()}"
    )
    print()
    print(table(rows))
    print()
    held = (
        f"A's other {30 - cap['a_sent']} wait until the window ends (wait_until = window end: "
        f"{cap['a_waits_until'] == cap['a_window_end']})"
    )
    print(
        f"two campaigns of one sender (1,000 per 60 s): B (no cap) sent {cap['b_sent']} of 20, "
        f"the last {cap['b_last_s']:.2f} s after the POSTs; A (hourly_limit 3) sent "
        f"{cap['a_sent']} meanwhile; {held}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=20, help="sends per window (20)")


def main(args: argparse.Namespace) -> None:
    if args.limit < 2 or args.window < 1:
        raise SystemExit("--limit must be at least 2 and --window positive")
    asyncio.run(run(args))
