"""Queue throughput: our RedisQueue (batched Lua claim + ack) vs SAQ vs arq, on one Redis.

    .venv/bin/python bench/queue.py [--n 10000] [--repeat 3] [--concurrency 10] [--batch 100]

Every system gets the same private Redis (started with dispatch_engine.embedded unless
--redis-url is given), the same N no-op jobs, the same client library (redis-py + hiredis)
and the same event loop, one system at a time with FLUSHALL in between. Runs are interleaved
(ours, SAQ, arq, ours, …) and the median of --repeat runs is printed. Before the timed runs each
system does one small untimed warm-up (connections opened, Lua scripts loaded), so neither
connection set-up nor SCRIPT LOAD is in the figures or in the memory delta.

- ours: `RedisQueue.enqueue` (one script call per 1,000 ids, due times in the past), then
  `--concurrency` loops that each `claim(--batch)`, call a no-op coroutine per id and `ack`.
- SAQ: `Queue.enqueue` of immediate jobs (its fastest path: straight onto the list), then a
  `saq.Worker(concurrency=--concurrency)` running a no-op function.
- arq: `ArqRedis.enqueue_job`, then `arq.Worker(max_jobs=--concurrency, poll_delay=0.01,
  burst=True)` running a no-op function (its default 0.5 s poll would cap it far lower).

SAQ and arq enqueue one job per call; 20 calls are kept in flight (SAQ's own
max_concurrent_ops default) for both. Bytes per job = INFO memory `used_memory` after the
enqueue minus before it, over N (the `used_memory_dataset` delta is printed too: it leaves
out client buffers).
"""

# This file is named queue.py and Python puts its folder first on sys.path, where it would
# shadow the standard library's `queue` (which concurrent.futures and SAQ import).
import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import asyncio
import contextlib
import logging
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis

from dispatch_engine.queue import RedisQueue

T = TypeVar("T")
ENQUEUE_IN_FLIGHT = 20  # SAQ's max_concurrent_ops default; used for arq too
ID_BASE = 10_000_000  # dispatch ids look like a busy database's bigint ids


@dataclass(frozen=True)
class Run:
    enqueue_s: float
    process_s: float
    used_bytes: int  # used_memory delta after the enqueue
    dataset_bytes: int  # used_memory_dataset delta after the enqueue
    processed: int


@dataclass(frozen=True)
class Options:
    n: int
    concurrency: int
    batch: int
    senders: int


async def memory(redis: Redis) -> tuple[int, int]:
    info = await redis.info("memory")
    return int(info["used_memory"]), int(info["used_memory_dataset"])


async def noop(*_args: Any, **_kwargs: Any) -> None:
    return None


async def gather_bounded(calls: Iterator[Awaitable[Any]], limit: int) -> None:
    """Await the calls with at most `limit` in flight."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[Any]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(one(c) for c in calls))


# ---- ours ----


async def run_ours(url: str, admin: Redis, opt: Options) -> Run:
    redis = Redis.from_url(url)
    queue = RedisQueue(redis)
    try:
        # one connection per claimer, opened before the clock starts
        await asyncio.gather(*(redis.ping() for _ in range(opt.concurrency)))
        before = await memory(admin)
        per_sender = -(-opt.n // opt.senders)
        past = int(time.time() * 1000) - 60_000
        t0 = time.perf_counter()
        for s in range(opt.senders):
            ids = range(ID_BASE + s * per_sender, ID_BASE + min(opt.n, (s + 1) * per_sender))
            await queue.enqueue(s + 1, ((i, past + (i - ID_BASE)) for i in ids))
        t1 = time.perf_counter()
        after = await memory(admin)

        done = 0

        async def claimer() -> None:
            nonlocal done
            while done < opt.n:
                result = await queue.claim(opt.batch)
                if not result.leases:
                    await asyncio.sleep(0.001)  # only near the end, while others still ack
                    continue
                for lease in result.leases:
                    await noop(lease)
                await queue.ack(result.leases)
                done += len(result.leases)

        t2 = time.perf_counter()
        await asyncio.gather(*(claimer() for _ in range(opt.concurrency)))
        t3 = time.perf_counter()
        left = await redis.zcard("dispatch:{q0}:leases")
        if left:
            raise RuntimeError(f"ours: {left} leases were not acked")
        return Run(t1 - t0, t3 - t2, after[0] - before[0], after[1] - before[1], done)
    finally:
        await redis.aclose()


# ---- SAQ ----


async def run_saq(url: str, admin: Redis, opt: Options) -> Run:
    from saq import Queue, Worker

    queue: Any = Queue.from_url(url, name="bench")  # a saq RedisQueue
    try:
        await queue.connect()
        await gather_bounded((queue.redis.ping() for _ in range(ENQUEUE_IN_FLIGHT)), 100)
        await queue.version()  # SAQ asks INFO once; keep it out of the timings
        before = await memory(admin)
        t0 = time.perf_counter()
        await gather_bounded((queue.enqueue("noop") for _ in range(opt.n)), ENQUEUE_IN_FLIGHT)
        t1 = time.perf_counter()
        after = await memory(admin)

        finished = asyncio.Event()
        count = 0

        async def counted(_ctx: Any) -> None:
            nonlocal count
            count += 1
            if count >= opt.n:
                finished.set()

        worker = Worker(
            queue,
            functions=[("noop", noop)],
            concurrency=opt.concurrency,
            after_process=counted,
        )
        t2 = time.perf_counter()
        task = asyncio.create_task(worker.start())
        await finished.wait()
        t3 = time.perf_counter()
        worker.event.set()
        await task
        return Run(t1 - t0, t3 - t2, after[0] - before[0], after[1] - before[1], count)
    finally:
        await queue.disconnect()


# ---- arq ----


async def run_arq(url: str, admin: Redis, opt: Options) -> Run:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name="arq:bench")
    await gather_bounded((pool.ping() for _ in range(ENQUEUE_IN_FLIGHT)), 100)
    before = await memory(admin)
    t0 = time.perf_counter()
    await gather_bounded((pool.enqueue_job("noop") for _ in range(opt.n)), ENQUEUE_IN_FLIGHT)
    t1 = time.perf_counter()
    after = await memory(admin)

    worker = Worker(
        functions=[func(noop, name="noop")],
        redis_pool=pool,
        queue_name="arq:bench",
        burst=True,  # returns once the queue is empty and every job finished
        poll_delay=0.01,
        max_jobs=opt.concurrency,
        handle_signals=False,
        log_results=False,
    )
    t2 = time.perf_counter()
    await worker.async_run()
    t3 = time.perf_counter()
    processed = worker.jobs_complete
    await worker.close()  # also closes the pool
    return Run(t1 - t0, t3 - t2, after[0] - before[0], after[1] - before[1], processed)


SYSTEMS: dict[str, Callable[[str, Redis, Options], Awaitable[Run]]] = {
    "ours": run_ours,
    "saq": run_saq,
    "arq": run_arq,
}
LABELS = {
    "ours": "dispatch_engine RedisQueue",
    "saq": "SAQ",
    "arq": "arq (poll_delay=0.01)",
}


# ---- driver ----


def run_on_loop(main: Coroutine[Any, Any, T], loop: str) -> T:
    """Run `main` on uvloop ("auto": when installed, as dispatch-engine's processes do)."""
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise SystemExit("--loop uvloop: uvloop is not installed") from None
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def loop_name(loop: str) -> str:
    if loop == "asyncio":
        return "asyncio"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"uvloop {version('uvloop')}"
    except PackageNotFoundError:
        return "asyncio (uvloop not installed)"


def revision() -> str:
    """The commit the package comes from, "+changes" when its files differ (read-only git)."""
    root = Path(__file__).resolve().parent.parent
    git = ["git", "--no-optional-locks", "-C", str(root)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        paths = ["dispatch_engine", "plugins", "migrations"]
        clean = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", *paths], check=False)
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return head + ("" if clean.returncode == 0 else "+uncommitted changes")


class OtherLoad:
    """CPU seconds that processes other than this one and Redis used (other users' work)."""

    def __init__(self, redis_pid: int | None) -> None:
        import psutil

        self.own = psutil.Process()
        self.redis = None
        if redis_pid:
            with contextlib.suppress(psutil.Error):
                self.redis = psutil.Process(redis_pid)
        self.total = 0.0
        self.wall = 0.0
        self._start = (0.0, 0.0)

    def _now(self) -> tuple[float, float]:
        import psutil

        t = psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        for p in (self.own, self.redis):
            if p is not None:
                with contextlib.suppress(psutil.Error):
                    c = p.cpu_times()
                    busy -= c.user + c.system
        return busy, time.monotonic()

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> float:
        """Average share of one core the others used since start()."""
        busy, at = self._now()
        self.total += busy - self._start[0]
        self.wall += at - self._start[1]
        # tick-granular counters can dip a little below zero on a quiet machine
        return max(0.0, (busy - self._start[0]) / max(at - self._start[1], 1e-9))


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from dispatch_engine.embedded import EmbeddedServers

    with tempfile.TemporaryDirectory(prefix="dispatch-bench-") as tmp:
        print("starting private PostgreSQL + Redis (dispatch_engine.embedded)…", file=sys.stderr)
        with EmbeddedServers(Path(tmp)) as servers:
            yield servers.urls.redis_url


def median_run(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.enqueue_s for r in runs),
        statistics.median(r.process_s for r in runs),
        int(statistics.median(r.used_bytes for r in runs)),
        int(statistics.median(r.dataset_bytes for r in runs)),
        runs[0].processed,
    )


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


async def bench(args: argparse.Namespace, url: str) -> None:
    admin = Redis.from_url(url)
    server = await admin.info("server")
    persistence = await admin.config_get("appendonly")
    name = "Valkey" if "valkey_version" in server else "Redis"
    version = server.get("valkey_version") or server["redis_version"]
    systems = [s for s in SYSTEMS if s in args.systems]
    full = Options(args.n, args.concurrency, args.batch, args.senders)
    warm = Options(min(args.n, 500), args.concurrency, args.batch, args.senders)

    for system in systems:  # untimed: connections, script cache, imports
        await admin.flushall()
        await SYSTEMS[system](url, admin, warm)

    runs: dict[str, list[Run]] = {s: [] for s in systems}
    load = OtherLoad(server.get("process_id") if args.redis_url is None else None)
    for attempt in range(args.repeat):
        for system in systems:
            await admin.flushall()
            await asyncio.sleep(0.2)  # let Redis free the flushed keys before measuring
            load.start()
            run = await SYSTEMS[system](url, admin, full)
            others = load.stop()
            if run.processed != args.n:
                raise RuntimeError(f"{system}: processed {run.processed} of {args.n}")
            runs[system].append(run)
            print(
                f"  run {attempt + 1}/{args.repeat} {system:4}: "
                f"enqueue {args.n / run.enqueue_s:>9,.0f}/s  "
                f"processed {args.n / run.process_s:>9,.0f}/s  "
                f"{run.used_bytes / args.n:6.0f} B/job  (others' load {others:.0%} of a core)",
                file=sys.stderr,
            )
    await admin.flushall()
    await admin.aclose()

    medians = {s: median_run(r) for s, r in runs.items()}
    ours = medians.get("ours")
    rows = [
        [
            "system",
            "enqueue jobs/s",
            "processed jobs/s",
            "Redis B/queued job",
            "(dataset B/job)",
            "ours ÷ theirs: enqueue",
            "processed",
        ]
    ]
    for system, m in medians.items():
        enq, proc = args.n / m.enqueue_s, args.n / m.process_s
        ratio_e = ratio_p = "—"
        if ours is not None and system != "ours":
            ratio_e = f"{(args.n / ours.enqueue_s) / enq:.1f}x"
            ratio_p = f"{(args.n / ours.process_s) / proc:.1f}x"
        rows.append(
            [
                LABELS[system],
                f"{enq:,.0f}",
                f"{proc:,.0f}",
                f"{m.used_bytes / args.n:,.0f}",
                f"{m.dataset_bytes / args.n:,.0f}",
                ratio_e,
                ratio_p,
            ]
        )
    print()
    print(
        f"N = {args.n:,} no-op jobs, median of {args.repeat} runs, concurrency {args.concurrency} "
        f"(ours: batch {args.batch}, {args.senders} sender(s)); {name} {version} on loopback "
        f"(appendonly {persistence.get('appendonly', '?')}); Python {sys.version.split()[0]} on "
        f"{loop_name(args.loop)}, "
        f"{os.cpu_count()} CPUs; dispatch_engine at {revision()}; "
        f"warm-up of {warm.n} jobs per system excluded; other processes on the machine used "
        f"{max(0.0, load.total) / max(load.wall, 1e-9):.0%} of a core on average during the runs"
    )
    print()
    print(table(rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="jobs per run (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per system (median)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=10,
        help="claimer loops (ours), Worker concurrency (SAQ), max_jobs (arq); default 10",
    )
    parser.add_argument("--batch", type=int, default=100, help="ids per claim (ours)")
    parser.add_argument("--senders", type=int, default=1, help="senders the ids are spread over")
    parser.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop for all three systems (auto: uvloop when installed, like dispatch-engine)",
    )
    parser.add_argument("--redis-url", help="use this Redis instead of starting a private one")
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=list(SYSTEMS),
        default=list(SYSTEMS),
        help="which systems to run (default all)",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1 or args.concurrency < 1 or args.batch < 1:
        parser.error("--n, --repeat, --concurrency and --batch must be positive")
    if args.senders < 1 or args.senders > args.n:
        parser.error("--senders must be between 1 and --n")
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)  # SAQ and arq log every job at INFO
    logging.getLogger("saq").setLevel(logging.ERROR)  # "did not finish within the grace period"
    with redis_server(args.redis_url) as url:
        run_on_loop(bench(args, url), args.loop)


if __name__ == "__main__":
    main()
