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
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arguments
import harness
import machine
import pacing_budget
from harness import Engine, span, table
from machine import Cpu, CpuMeters

from dispatch_engine.queue import shard_for

SUBJECT = "Pacing {{ email }}"
BODY = "Hello {{ email }},\n\nthis is one of the pacing benchmark's emails.\n"
SENDER_LIMIT = 1_000_000  # MAX_EMAILS_PER_HOUR: the senders' own limit, above every campaign's


# ---- one run ----


@dataclass
class SenderResult:
    limit: int
    sender_id: int
    per_window: list[int]  # received per observed window
    per_window_counter: list[int]  # the fixed_window counter of the same windows
    counted: list[int]  # the windows (of per_window) with a backlog at their end
    received: int  # by the end of the observation
    max_received: int  # the largest window by received_at, partial first window included
    max_sent_at: int  # the same by dispatches.sent_at
    max_counter: int  # the largest fixed_window counter read in Redis
    duplicates: int

    @property
    def mean(self) -> float:
        return statistics.mean(self.counted) if self.counted else float("nan")


@dataclass
class RunResult:
    senders: list[SenderResult]
    n: int
    windows: int
    window_s: float
    redis_commands: int
    redis_by_command: dict[str, int]
    received: int  # all senders, observed windows only
    cpu: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


async def one_run(args: argparse.Namespace, tmp: Path, run_no: int) -> RunResult:
    import aiohttp
    import asyncpg
    import orjson
    from redis.asyncio import Redis

    window_ms = int(args.window * 1000)
    with harness.private_servers(tmp / "servers") as srv:
        env = harness.engine_env(
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

            async def post(http: Any, i: int) -> int:
                payload = orjson.dumps(
                    {
                        "subject": SUBJECT,
                        "body": BODY,
                        "recipients": [f"s{i + 1}-{j}@example.com" for j in range(args.n)],
                        "hourly_limit": args.limits[i],
                    }
                )
                headers = {
                    "Authorization": f"Bearer {tokens[i]}",
                    "Content-Type": "application/json",
                }
                url = f"{engine.url}/api/emails/schedule"
                async with http.post(url, data=payload, headers=headers) as r:
                    answer = await r.json()
                    if r.status != 201:
                        raise RuntimeError(f"POST answered {r.status}: {answer}")
                return int(answer["campaign"]["id"])

            t_post = time.time()
            async with aiohttp.ClientSession() as http:
                campaign_ids = await asyncio.gather(
                    *(post(http, i) for i in range(len(args.limits)))
                )
            t_posted = time.time()
            by_campaign = {
                r["id"]: r["sender_id"]
                for r in await db.fetch(
                    "SELECT id, sender_id FROM campaigns WHERE id = ANY($1::bigint[])",
                    list(campaign_ids),
                )
            }
            sender_ids = [by_campaign[c] for c in campaign_ids]
            if len(set(sender_ids)) != len(sender_ids):
                raise RuntimeError(f"the campaigns share senders: {sender_ids}")
            print(
                f"  run {run_no}: 3 POSTs of {args.n:,} took {t_posted - t_post:.2f} s; observing "
                f"{args.windows} windows of {args.window} s…",
                file=sys.stderr,
            )
            first = int(t_posted * 1000) // window_ms + 1  # the first whole window
            last = first + args.windows - 1
            counters: dict[tuple[int, int], int] = {}
            own_mgets = 0

            async def sleep_until_ms(at_ms: int) -> None:
                await asyncio.sleep(max(0.0, at_ms / 1000 - time.time()))

            async def read_counters(window: int) -> None:
                nonlocal own_mgets
                keys = [
                    f"{shard_for(s, 1).pacing_prefix}{s}:c:{c}:w:{window}"
                    for s, c in zip(sender_ids, campaign_ids, strict=True)
                ]
                values = await redis.mget(keys)
                own_mgets += 1
                for s, v in zip(sender_ids, values, strict=True):
                    counters[(s, window)] = int(v or 0)

            # the windows before the first whole one (the POSTs' own) are read for the maximum
            for window in range(int(t_post * 1000) // window_ms, first):
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
            end_ms = (last + 1) * window_ms
            await asyncio.sleep(0.5)  # let the last window's group commits land (sent_at)

            by_command = {
                name.removeprefix("cmdstat_"): int(v["calls"])
                - int(stats0.get(name, {}).get("calls", 0))
                for name, v in stats1.items()
            }
            by_command["info"] = by_command.get("info", 0) - 1  # the first INFO itself
            by_command["mget"] = by_command.get("mget", 0) - own_mgets
            by_command = {k: v for k, v in by_command.items() if v > 0}

            received_rows = await db.fetch(
                """SELECT d.sender_id,
                          floor(extract(epoch FROM m.received_at) * 1000 / $1)::bigint AS w,
                          count(*) AS n, sum(m.deliveries - 1) AS dup
                   FROM captured_messages m JOIN dispatches d ON d.id = m.dispatch_id
                   WHERE d.campaign_id = ANY($2::bigint[])
                     AND m.received_at < to_timestamp($3::double precision / 1000)
                   GROUP BY 1, 2""",
                window_ms,
                list(campaign_ids),
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
                list(campaign_ids),
                end_ms,
            )
        finally:
            engine.stop()
            await redis.aclose()
            await db.close()

    received: dict[tuple[int, int], int] = {}
    duplicates: dict[int, int] = {}
    for r in received_rows:
        received[(r["sender_id"], r["w"])] = int(r["n"])
        duplicates[r["sender_id"]] = duplicates.get(r["sender_id"], 0) + int(r["dup"] or 0)
    sent_at: dict[tuple[int, int], int] = {(r["sender_id"], r["w"]): int(r["n"]) for r in sent_rows}
    results = []
    for limit, s in zip(args.limits, sender_ids, strict=True):
        per_window = [received.get((s, w), 0) for w in range(first, last + 1)]
        before = sum(v for (sid, w), v in received.items() if sid == s and w < first)
        counted, cumulative = [], before
        for v in per_window:
            cumulative += v
            if cumulative < args.n:  # a backlog remained at the window's end
                counted.append(v)
        results.append(
            SenderResult(
                limit=limit,
                sender_id=s,
                per_window=per_window,
                per_window_counter=[counters.get((s, w), 0) for w in range(first, last + 1)],
                counted=counted,
                received=cumulative,
                max_received=max([v for (sid, _), v in received.items() if sid == s] or [0]),
                max_sent_at=max([v for (sid, _), v in sent_at.items() if sid == s] or [0]),
                max_counter=max([v for (sid, _), v in counters.items() if sid == s] or [0]),
                duplicates=duplicates.get(s, 0),
            )
        )
    in_windows = sum(v for (_, w), v in received.items() if first <= w <= last)
    return RunResult(
        senders=results,
        n=args.n,
        windows=args.windows,
        window_s=args.window,
        redis_commands=sum(by_command.values()),
        redis_by_command=by_command,
        received=in_windows,
        cpu=cpu,
        problems=engine.problems(),
    )


# ---- report ----


def report(args: argparse.Namespace, runs: list[RunResult], load: str, discarded: int) -> None:
    rows = [
        [
            "sender",
            "limit / window",
            "sent / window: mean",
            "min",
            "max",
            "mean ÷ limit",
            "windows counted",
            f"backlog left after {args.windows} windows",
            "max in any window: received_at",
            "sent_at",
            "Redis counter",
            "over the limit by",
        ]
    ]
    for i, limit in enumerate(args.limits):
        per = [r.senders[i] for r in runs]
        over = [
            name
            for name, attr in (
                ("received_at", "max_received"),
                ("sent_at", "max_sent_at"),
                ("counter", "max_counter"),
            )
            if any(getattr(s, attr) > limit for s in per)
        ]
        rows.append(
            [
                f"{i + 1}",
                f"{limit:,}",
                span([s.mean for s in per]),
                span([min(s.counted or [0]) for s in per]),
                span([max(s.counted or [0]) for s in per]),
                span([s.mean / limit for s in per], ".0%"),
                span([len(s.counted) for s in per]),
                span([args.n - s.received for s in per]),
                span([s.max_received for s in per]),
                span([s.max_sent_at for s in per]),
                span([s.max_counter for s in per]),
                ", ".join(over) or "no",
            ]
        )
    print()
    print(
        f"3 senders x {args.n:,} emails due now, limits {', '.join(f'{x:,}' for x in args.limits)} "
        f"per window of {args.window} s (DISPATCH_RATE_WINDOW_SECONDS), {args.windows} whole "
        f"windows observed per run, {len(runs)} runs (ranges over runs); capture transport, "
        f"`dispatch-engine run` (all roles), WORKER_CONCURRENCY={args.concurrency}; Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs; dispatch_engine at "
        f"{harness.revision()}; {load}; other processes used "
        f"{span([r.cpu['others'] / r.cpu['wall'] for r in runs], '.0%')} of a core during the "
        f"runs ({discarded} run(s) discarded and redone for more than {args.max_others:.0%})"
    )
    print()
    print(table(rows))
    print()
    received = [r.received for r in runs]
    per_email = [r.redis_commands / max(r.received, 1) for r in runs]
    scripts = [
        (r.redis_by_command.get("evalsha", 0) + r.redis_by_command.get("eval", 0))
        / max(r.received, 1)
        for r in runs
    ]
    top = sorted(runs[0].redis_by_command.items(), key=lambda kv: -kv[1])[:8]
    print(
        f"all senders: {span([x / (args.windows * args.window) for x in received])} emails/s "
        f"received over the observed windows; Redis {span(per_email, '.2f')} commands per "
        f"email (inside scripts included), {span(scripts, '.3f')} script calls per email; "
        f"run 1's commands per email: "
        + ", ".join(f"{k} {v / max(runs[0].received, 1):.2f}" for k, v in top)
    )
    for name in ("dispatch-engine", "postgres", "redis", "others"):
        values = [r.cpu[name] for r in runs]
        micros = [1e6 * r.cpu[name] / max(r.received, 1) for r in runs]
        print(
            f"CPU {name}: {span(values, '.2f')} s over {span([r.cpu['wall'] for r in runs], '.1f')}"
            f" s ({span(micros, ',.0f')} µs per email)"
        )
    dups = sum(s.duplicates for r in runs for s in r.senders)
    problems = [p for r in runs for p in r.problems]
    print(f"duplicates received: {dups}; dispatch-engine logged {len(problems)} warnings/errors")
    for line in problems[:5]:
        print(f"  {line}")
    for n, r in enumerate(runs, 1):
        for i, s in enumerate(r.senders):
            print(
                f"run {n} sender {i + 1} per window, received_at (Redis counter): "
                + " ".join(
                    f"{v}({c})" for v, c in zip(s.per_window, s.per_window_counter, strict=True)
                )
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
