"""The peers harness: our RedisQueue vs SAQ vs arq vs BullMQ, on one private Redis, one run.

    .venv-bench/bin/python bench/queue_peers.py [--n 10000 100000] [--repeat 3] [--concurrency 10]

(`make bench` runs it, after `npm ci --prefix bench/bullmq`.)

Every system gets the same private Redis (dispatch_engine.embedded unless --redis-url), one
system at a time with FLUSHALL in between, runs interleaved (ours, SAQ, arq, BullMQ, ours, …);
the table shows the median of --repeat runs of each figure, and each peer's figure is followed
by ours ÷ theirs. The Python systems share one event loop and client (redis-py + hiredis);
BullMQ runs in Node (bench/bullmq/bench.mjs, `npm ci --prefix bench/bullmq`).

Scenarios, per N of --n:
- throughput: enqueue N no-op jobs due now (timed), then process them all (timed). Ours:
  `RedisQueue.enqueue` (a script call per 1,000 ids), then --concurrency loops that `claim`
  --batch ids, call a no-op per id and `ack`. SAQ: `Queue.enqueue` + `saq.Worker`
  (concurrency). arq: `enqueue_job` + `arq.Worker(poll_delay=0.01, max_jobs, burst=True)`.
  SAQ and arq enqueue one job per call, 20 calls in flight (SAQ's max_concurrent_ops).
  BullMQ: `addBulk` of 1,000 jobs a call + a `Worker(concurrency)`, jobs removed on
  completion. Bytes per queued job = INFO memory `used_memory` delta over the enqueue / N.
- delayed bytes: the same enqueue with every job due in an hour, no worker running.
Once per repeat:
- delayed-start lag: a worker is waiting when --lag-n jobs are enqueued, due --lag-rate per
  second from --lag-lead seconds on; lag = when the job's function starts (or, ours, when
  the claim returns it) minus its due time. Ours waits as dispatch-engine's worker does: one
  claim loop sleeping in `queue.Waker` (next due time from the claim, WAKE_CHANNEL wake-ups).
  SAQ: `scheduled` (its schedule poll, 1 s by default); arq: `_defer_until` (10 ms poll);
  BullMQ: `delay` (its blocking wait on Redis, so Redis' `hz` matters).
Once, after the repeats:
- idle commands/s: one worker with nothing to do; after --idle-settle seconds, the commands
  clients send Redis during --idle-seconds, read with MONITOR (commands that scripts run
  inside Redis are not counted: one script call is one command, one round trip).
A run during which other processes on the machine used more than --max-others of a core is
redone (twice at most); the share is printed with every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import arguments
import harness
from harness import percentile
from machine import Cpu, CpuMeters
from peer_systems import SYSTEMS
from peers import LagPlan, Options, Run
from redis.asyncio import Redis


class Results:
    """Every measured value by (figure, system), over the repeats."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[float]] = {}

    def add(self, figure: str, system: str, value: float) -> None:
        self.values.setdefault((figure, system), []).append(value)

    def median(self, figure: str, system: str) -> float | None:
        values = self.values.get((figure, system))
        return statistics.median(values) if values else None


async def timed_run(
    meters: CpuMeters, max_others: float, what: str, run: Callable[[], Awaitable[Any]]
) -> Any:
    """`run()`, redone (twice at most) when other processes used over `max_others` of a core."""
    for attempt in range(3):
        meters.start()
        result = await run()
        cpu = meters.stop()
        others = cpu["others"] / max(cpu["wall"], 1e-9)
        print(f"  {what}  (others' load {others:.0%} of a core)", file=sys.stderr)
        if others <= max_others or attempt == 2:
            return result
        print(f"  … others used more than {max_others:.0%} of a core: again", file=sys.stderr)
    raise AssertionError("unreachable")


class Bench:
    """The scenarios of one invocation, on one Redis; `results` collects every figure."""

    def __init__(self, args: argparse.Namespace, url: str, redis_pid: int | None) -> None:
        self.args = args
        self.url = url
        self.admin = Redis.from_url(url)
        self.peers = {s: SYSTEMS[s](url, self.admin) for s in args.systems}
        self.opts = [Options(n, args.concurrency, args.batch, args.senders) for n in args.n]
        self.plan = LagPlan(args.lag_n, args.lag_rate, args.lag_lead)
        self.meters = CpuMeters({"bench": Cpu([os.getpid()]), "redis": Cpu([redis_pid])})
        self.results = Results()

    async def fresh(self) -> None:
        await self.admin.flushall()
        await asyncio.sleep(0.2)  # let Redis free the flushed keys before measuring

    async def warm_up(self) -> None:
        """Untimed: connections, script cache, imports (bench.mjs warms up in its own run)."""
        warm = replace(self.opts[0], n=min(self.opts[0].n, 500))
        for system, peer in self.peers.items():
            if system != "bullmq":
                await self.fresh()
                await peer.throughput(warm)

    async def throughput(self, system: str, opt: Options) -> None:
        peer, n = self.peers[system], opt.n
        await self.fresh()
        run: Run = await timed_run(
            self.meters,
            self.args.max_others,
            f"{system:6} N={n:<7,} throughput",
            functools.partial(peer.throughput, opt),
        )
        if run.processed != n:
            raise RuntimeError(f"{system}: processed {run.processed} of {n}")
        self.results.add(f"enqueue/{n}", system, n / run.stored.enqueue_s)
        self.results.add(f"processed/{n}", system, n / run.process_s)
        self.results.add(f"bytes/{n}", system, run.stored.used_bytes / n)
        await self.fresh()
        delayed = (await peer.delayed(opt)).used_bytes / n
        self.results.add(f"delayed/{n}", system, delayed)
        print(
            f"    enqueue {n / run.stored.enqueue_s:>9,.0f}/s  processed {n / run.process_s:>9,.0f}"
            f"/s  {run.stored.used_bytes / n:5.0f} B/job, delayed {delayed:5.0f} B/job",
            file=sys.stderr,
        )

    async def lag(self, system: str) -> None:
        await self.fresh()
        lags: list[float] = await timed_run(
            self.meters,
            self.args.max_others,
            f"{system:6} lag ({self.plan.n:,} due at {self.plan.rate:,.0f}/s)",
            functools.partial(self.peers[system].lag, self.plan, self.opts[0]),
        )
        p50, p99 = percentile(lags, 0.5), percentile(lags, 0.99)
        self.results.add("lag50", system, p50)
        self.results.add("lag99", system, p99)
        print(f"    lag p50 {p50:.1f} ms, p99 {p99:.1f} ms", file=sys.stderr)

    async def idle(self, system: str) -> None:
        await self.fresh()
        async with self.peers[system].idle(self.opts[0]):
            await asyncio.sleep(self.args.idle_settle)
            seconds = self.args.idle_seconds
            rate = (await harness.client_commands(self.url, seconds)).total() / seconds
        self.results.add("idle", system, rate)
        print(f"  {system:6} idle: {rate:.3f} commands/s", file=sys.stderr)

    async def run(self) -> None:
        scenarios = self.args.scenarios
        if "throughput" in scenarios:
            await self.warm_up()
        timed = "throughput" in scenarios or "lag" in scenarios
        for attempt in range(1, self.args.repeat + 1 if timed else 1):
            print(f"repeat {attempt}/{self.args.repeat}", file=sys.stderr)
            for opt in self.opts if "throughput" in scenarios else []:
                for system in self.peers:
                    await self.throughput(system, opt)
            for system in self.peers if "lag" in scenarios else []:
                await self.lag(system)
        for system in self.peers if "idle" in scenarios else []:  # once: it hardly varies
            await self.idle(system)


async def bench(args: argparse.Namespace, url: str, redis_pid: int | None) -> None:
    runner = Bench(args, url, redis_pid)
    await runner.run()
    admin, plan, results = runner.admin, runner.plan, runner.results
    redis = harness.redis_version(await admin.info("server"))
    hz = (await admin.config_get("hz")).get("hz", "?")
    appendonly = (await admin.config_get("appendonly")).get("appendonly", "?")
    await admin.flushall()
    await admin.aclose()
    print()
    print(
        f"median of {args.repeat} runs; concurrency {args.concurrency} (ours: batch {args.batch}, "
        f"{args.senders} sender(s)); {redis} on loopback (hz {hz}, appendonly {appendonly}); "
        f"Python {sys.version.split()[0]} on {harness.loop_name(args.loop)}, "
        f"Node {node_version()}, {os.cpu_count()} CPUs; dispatch_engine at {harness.revision()}; "
        f"lag: {plan.n:,} jobs due {plan.rate:,.0f}/s; idle: one {args.idle_seconds:.0f} s window "
        f"(MONITOR) after the repeats"
    )
    print()
    print(report(results, args))


def node_version() -> str:
    import subprocess

    node = shutil.which("node")
    if node is None:
        return "(none)"
    return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()


def report(results: Results, args: argparse.Namespace) -> str:
    """One table: a row per figure, a column per system; peers' cells add ours ÷ theirs."""
    figures: list[tuple[str, str, str]] = []
    for n in args.n:
        figures += [
            (f"enqueue jobs/s, N={n:,}", f"enqueue/{n}", ",.0f"),
            (f"processed jobs/s, N={n:,}", f"processed/{n}", ",.0f"),
            (f"Redis B/queued job, N={n:,}", f"bytes/{n}", ",.0f"),
            (f"Redis B/delayed job, N={n:,}", f"delayed/{n}", ",.0f"),
        ]
    figures += [
        ("idle commands/s (one worker)", "idle", ".3f"),
        ("delayed-start lag p50, ms", "lag50", ".1f"),
        ("delayed-start lag p99, ms", "lag99", ".1f"),
    ]
    rows = [["figure (peer: value, ours ÷ theirs)", *(SYSTEMS[s].label for s in args.systems)]]
    for title, key, spec in figures:
        if all(results.median(key, system) is None for system in args.systems):
            continue  # a scenario left out (--scenarios)
        ours = results.median(key, "ours")
        row = [title]
        for system in args.systems:
            value = results.median(key, system)
            if value is None:
                row.append("—")
            elif system == "ours" or ours is None:
                row.append(format(value, spec))
            else:
                ratio = f"{ours / value:.2g}x" if value else ("—" if ours == 0 else "∞")
                row.append(f"{format(value, spec)} ({ratio})")
        rows.append(row)
    return harness.table(rows)


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[tuple[str, int | None]]:
    """(URL, server pid): the given URL, or a private Redis (with PostgreSQL) in a temp dir."""
    if url:
        yield url, None
        return
    with (
        tempfile.TemporaryDirectory(prefix="dispatch-bench-") as tmp,
        harness.private_servers(Path(tmp)) as servers,
    ):
        yield servers.redis_url, servers.redis_pid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arguments.parser(__doc__)
    add = parser.add_argument
    add("--n", type=int, nargs="+", default=[10_000, 100_000], help="jobs per run")
    add("--repeat", type=int, default=3, help="runs of everything (the median is shown)")
    add(
        "--concurrency",
        type=int,
        default=10,
        help="claimer loops (ours, throughput), concurrency (SAQ, BullMQ), max_jobs (arq)",
    )
    add("--batch", type=int, default=100, help="ids per claim (ours)")
    add("--senders", type=int, default=1, help="senders ours spreads the ids over")
    add("--lag-n", type=int, default=10_000, help="delayed jobs in the lag scenario")
    add("--lag-rate", type=float, default=1000.0, help="of them due per second")
    add("--lag-lead", type=float, default=4.0, help="seconds from the enqueue to the first due")
    add("--idle-seconds", type=float, default=65.0, help="idle window (ours asks every 30 s)")
    add("--idle-settle", type=float, default=2.0, help="seconds a worker idles before it")
    add(
        "--scenarios",
        nargs="+",
        choices=["throughput", "lag", "idle"],
        default=["throughput", "lag", "idle"],
        help="what to run (default all)",
    )
    add("--max-others", type=float, default=0.5, help="redo a run when others used more")
    arguments.add_loop(parser, "the Python systems")
    arguments.add_servers(
        parser, database=None, redis="use this Redis instead of starting a private one"
    )
    add(
        "--systems",
        nargs="+",
        choices=list(SYSTEMS),
        default=list(SYSTEMS),
        help="which systems to run (default all; the first is the reference: ours)",
    )
    args = arguments.parse(parser, argv, positive=("n", "repeat", "concurrency", "batch", "lag_n"))
    if args.senders < 1 or args.senders > min(args.n):
        parser.error("--senders must be between 1 and --n")
    if args.lag_rate <= 0 or args.lag_lead <= 0:
        parser.error("--lag-rate and --lag-lead must be positive")
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)  # SAQ and arq log every job at INFO
    logging.getLogger("saq").setLevel(logging.ERROR)  # "did not finish within the grace period"
    with redis_server(args.redis_url) as (url, pid):
        harness.run_on_loop(bench(args, url, pid), args.loop)


if __name__ == "__main__":
    main()
