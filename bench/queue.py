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

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from redis.asyncio import Redis  # noqa: E402

from dispatch_engine.queue import RedisQueue  # noqa: E402

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

    queue = Queue.from_url(url, name="bench")
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
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
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
    for attempt in range(args.repeat):
        for system in systems:
            await admin.flushall()
            await asyncio.sleep(0.2)  # let Redis free the flushed keys before measuring
            run = await SYSTEMS[system](url, admin, full)
            if run.processed != args.n:
                raise RuntimeError(f"{system}: processed {run.processed} of {args.n}")
            runs[system].append(run)
            print(
                f"  run {attempt + 1}/{args.repeat} {system:4}: "
                f"enqueue {args.n / run.enqueue_s:>9,.0f}/s  "
                f"processed {args.n / run.process_s:>9,.0f}/s  "
                f"{run.used_bytes / args.n:6.0f} B/job",
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
            ratio_e = f"{(args.n / ours.enqueue_s) / enq:.1f}×"
            ratio_p = f"{(args.n / ours.process_s) / proc:.1f}×"
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
        f"(appendonly {persistence.get('appendonly', '?')}); Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs; warm-up of {warm.n} jobs per system excluded"
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
    with redis_server(args.redis_url) as url:
        asyncio.run(bench(args, url))


if __name__ == "__main__":
    main()
