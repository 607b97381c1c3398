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
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness
from harness import Cpu, CpuMeters, percentile
from redis.asyncio import Redis

from dispatch_engine.queue import RedisQueue, Waker

ENQUEUE_IN_FLIGHT = 20  # SAQ's max_concurrent_ops default; used for arq too
ID_BASE = 10_000_000  # dispatch ids look like a busy database's bigint ids
HOUR_MS = 3_600_000
NODE_SCRIPT = Path(__file__).resolve().parent / "bullmq" / "bench.mjs"


@dataclass(frozen=True)
class Options:
    n: int
    concurrency: int
    batch: int
    senders: int


@dataclass(frozen=True)
class LagPlan:
    n: int
    rate: float  # jobs due per second
    lead_s: float  # the first is due this long after the enqueue starts

    def due_ms(self, base_ms: int, i: int) -> int:
        return base_ms + round(i * 1000 / self.rate)


@dataclass(frozen=True)
class Stored:
    enqueue_s: float
    used_bytes: int  # used_memory delta over the enqueue
    dataset_bytes: int  # used_memory_dataset delta (leaves out client buffers)


@dataclass(frozen=True)
class Run:
    stored: Stored
    process_s: float
    processed: int


async def noop(*_args: Any, **_kwargs: Any) -> None:
    return None


def now_ms() -> float:
    return time.time() * 1000


async def memory(redis: Redis) -> tuple[int, int]:
    info = await redis.info("memory")
    return int(info["used_memory"]), int(info["used_memory_dataset"])


async def measured(admin: Redis, enqueue: Callable[[], Awaitable[None]]) -> Stored:
    """Time `enqueue` and the Redis memory it added."""
    before = await memory(admin)
    t0 = time.perf_counter()
    await enqueue()
    enqueue_s = time.perf_counter() - t0
    after = await memory(admin)
    return Stored(enqueue_s, after[0] - before[0], after[1] - before[1])


async def gather_bounded(calls: Iterator[Awaitable[Any]], limit: int) -> None:
    """Await the calls with at most `limit` in flight."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[Any]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(one(c) for c in calls))


async def until_count(lags: list[float], n: int, within: float) -> None:
    """Wait until `lags` has `n` entries (the lag scenario's workers append to it)."""
    deadline = time.monotonic() + within
    while len(lags) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(lags)} of {n} delayed jobs ran within {within:.0f} s")
        await asyncio.sleep(0.05)


class Peer:
    """One system under test; `url` is the Redis all of them share."""

    label = ""

    def __init__(self, url: str, admin: Redis) -> None:
        self.url = url
        self.admin = admin

    async def throughput(self, opt: Options) -> Run:
        raise NotImplementedError

    async def delayed(self, opt: Options) -> Stored:
        raise NotImplementedError

    async def lag(self, plan: LagPlan, opt: Options) -> list[float]:
        raise NotImplementedError

    def idle(self, opt: Options) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError


class PythonPeer(Peer):
    """A system in this process: `_running` a worker, `_enqueue_due` jobs due at given times."""

    def _running(
        self, opt: Options, lags: list[float] | None
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """A waiting worker whose job function appends its lag to `lags`; yields a handle."""
        raise NotImplementedError

    async def _enqueue_due(self, handle: Any, plan: LagPlan, base_ms: int) -> None:
        raise NotImplementedError

    async def lag(self, plan: LagPlan, opt: Options) -> list[float]:
        lags: list[float] = []
        async with self._running(opt, lags) as handle:
            await asyncio.sleep(0.2)  # the worker is waiting for work
            base = int(now_ms() + plan.lead_s * 1000)
            await self._enqueue_due(handle, plan, base)
            if now_ms() >= base:
                raise RuntimeError("the enqueue outlasted --lag-lead: jobs were already due")
            await until_count(lags, plan.n, plan.lead_s + plan.n / plan.rate + 30)
        return lags

    def idle(self, opt: Options) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._running(opt, None)


# ---- ours ----


class Ours(PythonPeer):
    label = "ours (RedisQueue)"

    async def _enqueue(self, queue: RedisQueue, opt: Options, due_ms: int) -> None:
        per_sender = -(-opt.n // opt.senders)
        for s in range(opt.senders):
            ids = range(ID_BASE + s * per_sender, ID_BASE + min(opt.n, (s + 1) * per_sender))
            await queue.enqueue(s + 1, ((i, due_ms + (i - ID_BASE)) for i in ids))

    async def throughput(self, opt: Options) -> Run:
        redis = Redis.from_url(self.url)
        queue = RedisQueue(redis)
        try:
            # one connection per claimer, opened before the clock starts
            await asyncio.gather(*(redis.ping() for _ in range(opt.concurrency)))
            past = int(now_ms()) - HOUR_MS - opt.n  # every id due already (one ms apart)
            stored = await measured(self.admin, lambda: self._enqueue(queue, opt, past))
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

            t0 = time.perf_counter()
            await asyncio.gather(*(claimer() for _ in range(opt.concurrency)))
            process_s = time.perf_counter() - t0
            if left := await redis.zcard("dispatch:{q0}:leases"):
                raise RuntimeError(f"ours: {left} leases were not acked")
            return Run(stored, process_s, done)
        finally:
            await redis.aclose()

    async def delayed(self, opt: Options) -> Stored:
        redis = Redis.from_url(self.url)
        queue = RedisQueue(redis)
        try:
            await redis.ping()
            later = int(now_ms()) + HOUR_MS
            return await measured(self.admin, lambda: self._enqueue(queue, opt, later))
        finally:
            await redis.aclose()

    @contextlib.asynccontextmanager
    async def _running(self, opt: Options, lags: list[float] | None) -> AsyncIterator[Any]:
        """dispatch-engine's way to wait for work: one claim loop asleep in a `Waker`."""
        redis, pubsub = Redis.from_url(self.url), Redis.from_url(self.url)
        queue = RedisQueue(redis)
        waker = Waker(pubsub)
        due: dict[int, int] = {}

        async def claim_loop() -> None:
            while not waker.stopped:
                result = await queue.claim(opt.batch)
                if not result.leases:
                    await waker.until_due(result)
                    continue
                at = now_ms()
                if lags is not None:
                    lags.extend(at - due[lease.dispatch_id] for lease in result.leases)
                await queue.ack(result.leases)

        tasks = [asyncio.create_task(waker.listen()), asyncio.create_task(claim_loop())]
        try:
            yield queue, due
        finally:
            waker.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await redis.aclose()
            await pubsub.aclose()

    async def _enqueue_due(self, handle: Any, plan: LagPlan, base_ms: int) -> None:
        queue, due = handle
        due.update((ID_BASE + i, plan.due_ms(base_ms, i)) for i in range(plan.n))
        await queue.enqueue(1, due.items())


# ---- SAQ ----


class Saq(PythonPeer):
    label = "SAQ"

    @contextlib.asynccontextmanager
    async def _queue(self) -> AsyncIterator[Any]:
        from saq import Queue

        queue: Any = Queue.from_url(self.url, name="bench")  # a saq RedisQueue
        try:
            await queue.connect()
            await gather_bounded((queue.redis.ping() for _ in range(ENQUEUE_IN_FLIGHT)), 100)
            await queue.version()  # SAQ asks INFO once; keep it out of the timings
            yield queue
        finally:
            await queue.disconnect()

    @contextlib.asynccontextmanager
    async def _worker(self, queue: Any, opt: Options, fn: Any, **kw: Any) -> AsyncIterator[Any]:
        from saq import Worker

        worker = Worker(queue, functions=[("noop", fn)], concurrency=opt.concurrency, **kw)
        task = asyncio.create_task(worker.start())
        try:
            yield worker
        finally:
            worker.event.set()
            await task

    async def _enqueue(self, queue: Any, n: int, scheduled: Callable[[int], float]) -> None:
        calls = (queue.enqueue("noop", scheduled=scheduled(i)) for i in range(n))
        await gather_bounded(calls, ENQUEUE_IN_FLIGHT)

    async def throughput(self, opt: Options) -> Run:
        async with self._queue() as queue:
            stored = await measured(self.admin, lambda: self._enqueue(queue, opt.n, lambda _: 0))
            finished = asyncio.Event()
            count = 0

            async def counted(_ctx: Any) -> None:
                nonlocal count
                count += 1
                if count >= opt.n:
                    finished.set()

            t0 = time.perf_counter()
            async with self._worker(queue, opt, noop, after_process=counted):
                await finished.wait()
                process_s = time.perf_counter() - t0
            return Run(stored, process_s, count)

    async def delayed(self, opt: Options) -> Stored:
        later = time.time() + HOUR_MS / 1000
        async with self._queue() as queue:
            return await measured(self.admin, lambda: self._enqueue(queue, opt.n, lambda _: later))

    @contextlib.asynccontextmanager
    async def _running(self, opt: Options, lags: list[float] | None) -> AsyncIterator[Any]:
        async def started(ctx: Any) -> None:
            if lags is not None:
                lags.append(now_ms() - ctx["job"].scheduled * 1000)

        async with self._queue() as queue, self._worker(queue, opt, started):
            yield queue

    async def _enqueue_due(self, handle: Any, plan: LagPlan, base_ms: int) -> None:
        await self._enqueue(handle, plan.n, lambda i: plan.due_ms(base_ms, i) / 1000)


# ---- arq ----


class Arq(PythonPeer):
    label = "arq (poll 10 ms)"
    queue_name = "arq:bench"

    async def _pool(self) -> Any:
        from arq import create_pool
        from arq.connections import RedisSettings

        pool = await create_pool(
            RedisSettings.from_dsn(self.url), default_queue_name=self.queue_name
        )
        await gather_bounded((pool.ping() for _ in range(ENQUEUE_IN_FLIGHT)), 100)
        return pool

    def _worker(self, pool: Any, opt: Options, fn: Any, *, burst: bool) -> Any:
        from arq.worker import Worker, func

        return Worker(
            functions=[func(fn, name="noop")],
            redis_pool=pool,
            queue_name=self.queue_name,
            burst=burst,  # burst: returns once the queue is empty and every job finished
            poll_delay=0.01,  # its default 0.5 s would cap it far lower
            max_jobs=opt.concurrency,
            handle_signals=False,
            log_results=False,
        )

    async def _enqueue(self, pool: Any, n: int, **kw: Any) -> None:
        await gather_bounded((pool.enqueue_job("noop", **kw) for _ in range(n)), ENQUEUE_IN_FLIGHT)

    async def throughput(self, opt: Options) -> Run:
        pool = await self._pool()
        stored = await measured(self.admin, lambda: self._enqueue(pool, opt.n))
        worker = self._worker(pool, opt, noop, burst=True)
        t0 = time.perf_counter()
        await worker.async_run()
        process_s = time.perf_counter() - t0
        processed = worker.jobs_complete
        await worker.close()  # also closes the pool
        return Run(stored, process_s, processed)

    async def delayed(self, opt: Options) -> Stored:
        pool = await self._pool()
        try:
            later = {"_defer_by": HOUR_MS / 1000}
            return await measured(self.admin, lambda: self._enqueue(pool, opt.n, **later))
        finally:
            await pool.aclose()

    @contextlib.asynccontextmanager
    async def _running(self, opt: Options, lags: list[float] | None) -> AsyncIterator[Any]:
        async def started(ctx: Any) -> None:
            if lags is not None:
                lags.append(now_ms() - ctx["score"])

        pool = await self._pool()
        worker = self._worker(pool, opt, started, burst=False)
        task = asyncio.create_task(worker.async_run())
        try:
            yield pool
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await worker.close()

    async def _enqueue_due(self, handle: Any, plan: LagPlan, base_ms: int) -> None:
        at = (datetime.fromtimestamp(plan.due_ms(base_ms, i) / 1000, UTC) for i in range(plan.n))
        calls = (handle.enqueue_job("noop", _defer_until=t) for t in at)
        await gather_bounded(calls, ENQUEUE_IN_FLIGHT)


# ---- BullMQ (Node) ----


class BullMQ(Peer):
    label = "BullMQ"

    def _command(self, mode: str, **params: Any) -> list[str]:
        node = shutil.which("node")
        if node is None or not (NODE_SCRIPT.parent / "node_modules" / "bullmq").is_dir():
            raise SystemExit("BullMQ needs node and `npm ci --prefix bench/bullmq` (make bench)")
        args = [node, str(NODE_SCRIPT), "--url", self.url, "--mode", mode]
        for name, value in params.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        return args

    async def _node(self, mode: str, **params: Any) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            *self._command(mode, **params), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"bench/bullmq/bench.mjs --mode {mode} exited {proc.returncode}")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    @staticmethod
    def _stored(r: dict[str, Any]) -> Stored:
        return Stored(float(r["enqueue_s"]), int(r["used_bytes"]), int(r["dataset_bytes"]))

    async def throughput(self, opt: Options) -> Run:
        r = await self._node("throughput", n=opt.n, concurrency=opt.concurrency)
        return Run(self._stored(r), float(r["process_s"]), int(r["processed"]))

    async def delayed(self, opt: Options) -> Stored:
        return self._stored(await self._node("delayed-bytes", n=opt.n))

    async def lag(self, plan: LagPlan, opt: Options) -> list[float]:
        r = await self._node(
            "lag",
            n=plan.n,
            rate=plan.rate,
            lead_ms=round(plan.lead_s * 1000),
            concurrency=opt.concurrency,
        )
        return [float(x) for x in r["lags_ms"]]

    def idle(self, opt: Options) -> contextlib.AbstractAsyncContextManager[Any]:
        @contextlib.asynccontextmanager
        async def running() -> AsyncIterator[None]:
            proc = await asyncio.create_subprocess_exec(
                *self._command("idle", concurrency=opt.concurrency),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert proc.stdin is not None and proc.stdout is not None
            try:
                await proc.stdout.readline()  # {"ready": true}
                yield
            finally:
                proc.stdin.close()
                await proc.wait()

        return running()


SYSTEMS: dict[str, type[Peer]] = {"ours": Ours, "saq": Saq, "arq": Arq, "bullmq": BullMQ}


# ---- measuring ----


async def client_commands(url: str, seconds: float) -> int:
    """Commands clients send Redis during `seconds` (MONITOR; scripts' own calls left out)."""
    redis = Redis.from_url(url)
    seen = 0
    try:
        async with redis.monitor() as monitor:

            async def watch() -> None:
                nonlocal seen
                while True:
                    if (await monitor.next_command())["client_type"] != "lua":
                        seen += 1

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch(), seconds)
    finally:
        await redis.aclose()
    return seen


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
            rate = await client_commands(self.url, seconds) / seconds
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
    server = await admin.info("server")
    hz = (await admin.config_get("hz")).get("hz", "?")
    appendonly = (await admin.config_get("appendonly")).get("appendonly", "?")
    await admin.flushall()
    await admin.aclose()
    name = "Valkey" if "valkey_version" in server else "Redis"
    version = server.get("valkey_version") or server["redis_version"]
    print()
    print(
        f"median of {args.repeat} runs; concurrency {args.concurrency} (ours: batch {args.batch}, "
        f"{args.senders} sender(s)); {name} {version} on loopback (hz {hz}, appendonly "
        f"{appendonly}); Python {sys.version.split()[0]} on {harness.loop_name(args.loop)}, "
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
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
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
    add(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop of the Python systems (auto: uvloop when installed, like ours)",
    )
    add("--redis-url", help="use this Redis instead of starting a private one")
    add(
        "--systems",
        nargs="+",
        choices=list(SYSTEMS),
        default=list(SYSTEMS),
        help="which systems to run (default all; the first is the reference: ours)",
    )
    args = parser.parse_args(argv)
    if min(args.n) < 1 or args.repeat < 1 or args.concurrency < 1 or args.batch < 1:
        parser.error("--n, --repeat, --concurrency and --batch must be positive")
    if args.senders < 1 or args.senders > min(args.n):
        parser.error("--senders must be between 1 and --n")
    if args.lag_n < 1 or args.lag_rate <= 0 or args.lag_lead <= 0:
        parser.error("--lag-n, --lag-rate and --lag-lead must be positive")
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)  # SAQ and arq log every job at INFO
    logging.getLogger("saq").setLevel(logging.ERROR)  # "did not finish within the grace period"
    with redis_server(args.redis_url) as (url, pid):
        harness.run_on_loop(bench(args, url, pid), args.loop)


if __name__ == "__main__":
    main()
