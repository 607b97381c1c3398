"""Pacing: three senders, each N emails due now, each held to its own limit per window.

    .venv/bin/python bench/pacing.py [--n 10000] [--windows 10] [--repeat 3]
    .venv/bin/python bench/pacing.py --scenario budget   # see bench/pacing_budget.py

Issue 3's scenario, shortened: the rate window is DISPATCH_RATE_WINDOW_SECONDS (--window,
2 s) instead of an hour, so ten windows take twenty seconds. What runs, all on this machine:
- a private PostgreSQL + Redis (dispatch_engine.embedded), new for every run;
- three users, each with its own default sender (`dispatch-engine token create --email …`,
  with MAX_EMAILS_PER_HOUR=1000000 so the sender's own limit does not bind);
- `dispatch-engine run` (all roles in one process) with the capture transport (every email
  is an INSERT into PostgreSQL's `captured_messages`, stamped `received_at`);
- three POST /api/emails/schedule at once, one per user: N recipients each, due now, with
  the campaign's `hourly_limit` (--limits, 600 1200 2400: per window here).

After the three POSTs have answered, the script observes --windows whole windows (window
number = epoch ms // window ms, the fixed_window policy's own key) and reports per sender:
- sends per window from `captured_messages.received_at` (when the transport handed the
  email over): mean / min / max over the whole windows observed in which the sender still
  had a backlog at the window's end, and that mean ÷ the limit;
- whether any window, from the first send on (the partial first one included), received more
  than the limit: by received_at, by `dispatches.sent_at` (the group commit), and by the
  campaign's own counter in Redis (`dispatch:{q0}:p:<sender>:c:<campaign>:w:<window>`, read
  each window);
- the backlog left at the end of the observation (N - received);
- Redis commands per email received (INFO commandstats delta over the observed windows,
  commands run inside Lua scripts included, the script's own reads left out), and the CPU
  seconds of dispatch-engine, PostgreSQL and Redis over the same windows.
Nothing asserts: it prints figures. Every run stops all it started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import arguments
import harness
import machine
import pacing_budget
from harness import Engine
from machine import Cpu, CpuMeters
from pacing_report import RunResult, SenderResult, report

from dispatch_engine.queue import shard_for

SUBJECT = "Pacing {{ email }}"
BODY = "Hello {{ email }},\n\nthis is one of the pacing benchmark's emails.\n"
SENDER_LIMIT = 1_000_000  # MAX_EMAILS_PER_HOUR: the senders' own limit, above every campaign's


# ---- one run ----


@dataclass
class Campaigns:
    """The three POSTed campaigns, in --limits order, and when their POSTs ran."""

    ids: list[int]
    sender_ids: list[int]
    posted_from: float  # epoch s, just before the POSTs
    posted_at: float  # when the last one answered


@dataclass
class Observation:
    """What the script read during the whole windows first..last."""

    first: int
    last: int
    counters: dict[tuple[int, int], int]  # (sender, window) → the campaign's counter
    by_command: dict[str, int]  # Redis commands over the windows, the script's own left out
    cpu: dict[str, float]

    @property
    def windows(self) -> range:
        return range(self.first, self.last + 1)


def engine_environment(args: argparse.Namespace, srv: Any, tmp: Path) -> dict[str, str]:
    return harness.engine_env(
        srv,
        tmp,
        DISPATCH_TRANSPORT="capture",
        MAX_EMAILS_PER_HOUR=SENDER_LIMIT,
        DISPATCH_RATE_WINDOW_SECONDS=args.window,
        WORKER_CONCURRENCY=args.concurrency,
        # the defaults: fixed_window + min_gap, every built-in plugin
        DISPATCH_PACING=None,
        DISPATCH_PLUGINS=None,
        DISPATCH_PLUGINS_DIR=None,
    )


async def post_campaigns(
    args: argparse.Namespace, engine: Engine, tokens: list[str], db: Any
) -> Campaigns:
    """The three POSTs at once, one per user: N recipients each at its campaign limit."""
    import aiohttp

    def payload(i: int) -> dict[str, Any]:
        return {
            "subject": SUBJECT,
            "body": BODY,
            "recipients": [f"s{i + 1}-{j}@example.com" for j in range(args.n)],
            "hourly_limit": args.limits[i],
        }

    t_post = time.time()
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(
            *(harness.schedule(http, engine.url, tokens[i], payload(i)) for i in range(len(tokens)))
        )
    t_posted = time.time()
    ids = [int(answer["campaign"]["id"]) for answer in answers]
    rows = await db.fetch(
        "SELECT id, sender_id FROM campaigns WHERE id = ANY($1::bigint[])", list(ids)
    )
    by_campaign = {r["id"]: r["sender_id"] for r in rows}
    sender_ids = [by_campaign[c] for c in ids]
    if len(set(sender_ids)) != len(sender_ids):
        raise RuntimeError(f"the campaigns share senders: {sender_ids}")
    return Campaigns(ids, sender_ids, t_post, t_posted)


async def sleep_until_ms(at_ms: int) -> None:
    await asyncio.sleep(max(0.0, at_ms / 1000 - time.time()))


def commands_between(
    before: dict[str, Any], after: dict[str, Any], own_mgets: int
) -> dict[str, int]:
    """Redis calls per command between two INFO commandstats, less the script's own reads."""
    by_command = {
        name.removeprefix("cmdstat_"): int(v["calls"]) - int(before.get(name, {}).get("calls", 0))
        for name, v in after.items()
    }
    by_command["info"] = by_command.get("info", 0) - 1  # the first INFO itself
    by_command["mget"] = by_command.get("mget", 0) - own_mgets
    return {k: v for k, v in by_command.items() if v > 0}


async def observe(
    args: argparse.Namespace, redis: Any, meters: CpuMeters, campaigns: Campaigns
) -> Observation:
    """Read every campaign's fixed_window counter at each window's end, for --windows whole
    windows, with Redis' commands and the CPU meters over the same span."""
    window_ms = int(args.window * 1000)
    first = int(campaigns.posted_at * 1000) // window_ms + 1  # the first whole window
    last = first + args.windows - 1
    counters: dict[tuple[int, int], int] = {}
    own_mgets = 0

    async def read_counters(window: int) -> None:
        nonlocal own_mgets
        keys = [
            f"{shard_for(s, 1).pacing_prefix}{s}:c:{c}:w:{window}"
            for s, c in zip(campaigns.sender_ids, campaigns.ids, strict=True)
        ]
        values = await redis.mget(keys)
        own_mgets += 1
        for s, v in zip(campaigns.sender_ids, values, strict=True):
            counters[(s, window)] = int(v or 0)

    # the windows before the first whole one (the POSTs' own) are read for the maximum
    for window in range(int(campaigns.posted_from * 1000) // window_ms, first):
        await read_counters(window)
    await sleep_until_ms(first * window_ms)
    stats0 = await redis.info("commandstats")
    own_mgets = 0
    meters.start()
    for window in range(first, last + 1):
        # a window's counter is final once it ended; it lives two windows
        await sleep_until_ms((window + 1) * window_ms + 50)
        await read_counters(window)
    stats1 = await redis.info("commandstats")
    cpu = meters.stop()
    return Observation(first, last, counters, commands_between(stats0, stats1, own_mgets), cpu)


async def per_window_counts(
    db: Any, window_ms: int, campaign_ids: list[int], end_ms: int
) -> tuple[dict[tuple[int, int], int], dict[int, int], dict[tuple[int, int], int]]:
    """Up to `end_ms`: emails received per (sender, window), duplicates per sender, and
    emails recorded sent per (sender, window) by `dispatches.sent_at`."""
    received_rows = await db.fetch(
        """SELECT d.sender_id,
                  floor(extract(epoch FROM m.received_at) * 1000 / $1)::bigint AS w,
                  count(*) AS n, sum(m.deliveries - 1) AS dup
           FROM captured_messages m JOIN dispatches d ON d.id = m.dispatch_id
           WHERE d.campaign_id = ANY($2::bigint[])
             AND m.received_at < to_timestamp($3::double precision / 1000)
           GROUP BY 1, 2""",
        window_ms,
        campaign_ids,
        end_ms,
    )
    sent_rows = await db.fetch(
        """SELECT sender_id,
                  floor(extract(epoch FROM sent_at) * 1000 / $1)::bigint AS w,
                  count(*) AS n
           FROM dispatches
           WHERE campaign_id = ANY($2::bigint[]) AND sent_at IS NOT NULL
             AND sent_at < to_timestamp($3::double precision / 1000)
           GROUP BY 1, 2""",
        window_ms,
        campaign_ids,
        end_ms,
    )
    received: dict[tuple[int, int], int] = {}
    duplicates: dict[int, int] = {}
    for r in received_rows:
        received[(r["sender_id"], r["w"])] = int(r["n"])
        duplicates[r["sender_id"]] = duplicates.get(r["sender_id"], 0) + int(r["dup"] or 0)
    sent_at = {(r["sender_id"], r["w"]): int(r["n"]) for r in sent_rows}
    return received, duplicates, sent_at


def sender_result(
    args: argparse.Namespace, limit: int, s: int, seen: Observation,
    received: dict[tuple[int, int], int], duplicates: dict[int, int],
    sent_at: dict[tuple[int, int], int],
) -> SenderResult:  # fmt: skip
    per_window = [received.get((s, w), 0) for w in seen.windows]
    before = sum(v for (sid, w), v in received.items() if sid == s and w < seen.first)
    counted, cumulative = [], before
    for v in per_window:
        cumulative += v
        if cumulative < args.n:  # a backlog remained at the window's end
            counted.append(v)
    return SenderResult(
        limit=limit,
        sender_id=s,
        per_window=per_window,
        per_window_counter=[seen.counters.get((s, w), 0) for w in seen.windows],
        counted=counted,
        received=cumulative,
        max_received=max([v for (sid, _), v in received.items() if sid == s] or [0]),
        max_sent_at=max([v for (sid, _), v in sent_at.items() if sid == s] or [0]),
        max_counter=max([v for (sid, _), v in seen.counters.items() if sid == s] or [0]),
        duplicates=duplicates.get(s, 0),
    )


async def one_run(args: argparse.Namespace, tmp: Path, run_no: int) -> RunResult:
    """New servers and one `dispatch-engine run`; the POSTs; --windows windows observed."""
    import asyncpg
    from redis.asyncio import Redis

    window_ms = int(args.window * 1000)
    with harness.private_servers(tmp / "servers") as srv:
        env = engine_environment(args, srv, tmp)
        tokens = [
            harness.create_token(env, tmp, f"pacing-{i + 1}@example.com")
            for i in range(len(args.limits))
        ]
        engine = Engine(env, tmp)
        db = await asyncpg.connect(srv.database_url)
        redis = Redis.from_url(srv.redis_url)
        try:
            engine.wait_ready()
            meters = CpuMeters(
                {
                    "dispatch-engine": Cpu([engine.proc.pid]),
                    "postgres": Cpu([srv.postgres_pid], tree=True),
                    "redis": Cpu([srv.redis_pid]),
                    "bench script": Cpu([os.getpid()]),
                }
            )
            campaigns = await post_campaigns(args, engine, tokens, db)
            print(
                f"  run {run_no}: 3 POSTs of {args.n:,} took "
                f"{campaigns.posted_at - campaigns.posted_from:.2f} s; observing "
                f"{args.windows} windows of {args.window} s…",
                file=sys.stderr,
            )
            seen = await observe(args, redis, meters, campaigns)
            await asyncio.sleep(0.5)  # let the last window's group commits land (sent_at)
            end_ms = (seen.last + 1) * window_ms
            received, duplicates, sent_at = await per_window_counts(
                db, window_ms, campaigns.ids, end_ms
            )
        finally:
            engine.stop()
            await redis.aclose()
            await db.close()

    return RunResult(
        senders=[
            sender_result(args, limit, s, seen, received, duplicates, sent_at)
            for limit, s in zip(args.limits, campaigns.sender_ids, strict=True)
        ],
        n=args.n,
        windows=args.windows,
        window_s=args.window,
        redis_commands=sum(seen.by_command.values()),
        redis_by_command=seen.by_command,
        received=sum(v for (_, w), v in received.items() if seen.first <= w <= seen.last),
        cpu=seen.cpu,
        problems=engine.problems(),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arguments.parser(__doc__)
    parser.add_argument("--n", type=int, default=10_000, help="emails per sender (10000)")
    parser.add_argument(
        "--limits",
        type=int,
        nargs=3,
        default=[600, 1200, 2400],
        metavar="L",
        help="each campaign's hourly_limit, i.e. per window here (600 1200 2400)",
    )
    parser.add_argument(
        "--window", type=int, default=2, help="DISPATCH_RATE_WINDOW_SECONDS (default 2)"
    )
    parser.add_argument("--windows", type=int, default=10, help="whole windows to observe (10)")
    parser.add_argument("--repeat", type=int, default=3, help="runs, each on new servers (3)")
    arguments.add_worker_concurrency(parser)
    parser.add_argument(
        "--scenario",
        choices=("limits", "budget"),
        default="limits",
        help="limits: three senders at their own campaign limit (default); budget: the share "
        "of each window's budget used, and a cap that holds back only its campaign",
    )
    pacing_budget.add_arguments(parser)
    arguments.add_quiet(parser, max_load=0.8, max_wait=600, retries=3)
    positive = ("n", "windows", "repeat", "window", "limits", "concurrency")
    return arguments.parse(parser, argv, positive=positive)


def main() -> None:
    args = parse_args()
    if args.scenario == "budget":
        pacing_budget.main(args)
        return
    load = machine.wait_for_quiet(args.max_load, args.max_wait)
    print(load, file=sys.stderr)
    runs, discarded = [], 0
    for run_no in range(1, args.repeat + 1):
        for attempt in range(args.retries + 1):
            machine.wait_until_idle(args.max_others, args.max_wait)
            with tempfile.TemporaryDirectory(prefix="dispatch-pacing-") as name:
                run = asyncio.run(one_run(args, Path(name), run_no))
            share = run.cpu["others"] / run.cpu["wall"]
            if share <= args.max_others or attempt == args.retries:
                break
            discarded += 1
            print(
                f"  run {run_no} discarded: other processes used {share:.0%} of a core meanwhile",
                file=sys.stderr,
            )
        runs.append(run)
    report(args, runs, load, discarded)


if __name__ == "__main__":
    main()
