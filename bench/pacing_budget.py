"""Pacing budget: the share of each window's budget used, and a cap that holds back only its own.

    .venv-bench/bin/python bench/pacing.py --scenario budget [--limit 20] [--window 3]

Issue 11's scenario, shortened. Each case runs `dispatch-engine run` (all roles, capture
transport) on new private PostgreSQL + Redis:
- one sender at --limit per window of --window s (MAX_EMAILS_PER_HOUR,
  DISPATCH_RATE_WINDOW_SECONDS), one campaign of 3.5 windows' worth of emails starting just
  after a window opens; `fixed_window` and `sliding_window`, each with a delay between
  emails (min-gap on: the window's budget fits in two thirds of the window) and without.
  Reported: sends per window by `dispatches.sent_at` (fixed: clock windows; sliding:
  windows from the first send) and each window's share of the budget (the last, partial
  window is left out). Correct is 100 % in every full window.
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

    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{engine.url}/api/emails/schedule", json=payload, headers=headers) as r,
    ):
        answer = await r.json()
        if r.status != 201:
            raise RuntimeError(f"POST answered {r.status}: {answer}")
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


async def window_case(args: argparse.Namespace, tmp: Path, policy: str, gap: bool) -> list[int]:
    """Sends per window of one campaign of 3.5 windows' worth, under `policy`."""
    import asyncpg

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

            async def all_sent() -> bool:
                return len(await _sent_times(db, campaign)) >= n

            await _until(all_sent, time.time() + args.window * 8 + 30, 0.5)
            times = await _sent_times(db, campaign)
        finally:
            engine.stop()
            await db.close()
    if policy == "fixed_window":
        counts = Counter(int(t // args.window) for t in times)
        first = min(counts)
    else:  # any window: from the first send on
        counts = Counter(int((t - times[0]) // args.window) for t in times)
        first = 0
    return [counts.get(w, 0) for w in range(first, max(counts) + 1)]


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
    rows = [["window", "min-gap", "per window (sends)", "share of the budget, full windows"]]
    for policy in ("fixed_window", "sliding_window"):
        for gap in (True, False):
            with tempfile.TemporaryDirectory(prefix="dispatch-budget-") as name:
                per = await window_case(args, Path(name), policy, gap)
            full = per[:-1] if len(per) > 1 else per
            shares = " ".join(f"{v / args.limit:.0%}" for v in full)
            delay = (args.window * 1000 * 2 // 3) // args.limit
            rows.append([policy, f"{delay} ms" if gap else "off", " ".join(map(str, per)), shares])
            print(f"  {policy}, gap {'on' if gap else 'off'}: {per}", file=sys.stderr)
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
