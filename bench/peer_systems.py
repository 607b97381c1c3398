"""The systems of the peers harness (queue_peers.py): ours (`RedisQueue`), SAQ, arq and
BullMQ, each behind the `Peer` interface of peers.py (queue_peers.py's docstring says what
each scenario does with each of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from peers import (
    ENQUEUE_IN_FLIGHT,
    HOUR_MS,
    ID_BASE,
    LagPlan,
    Options,
    Peer,
    PythonPeer,
    Run,
    Stored,
    gather_bounded,
    measured,
    noop,
    now_ms,
)
from redis.asyncio import Redis

from dispatch_engine.events import Subscription
from dispatch_engine.queue import RedisQueue, Waker

NODE_SCRIPT = Path(__file__).resolve().parent / "bullmq" / "bench.mjs"


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
        waker, subscription = Waker(), Subscription(pubsub)
        waker.listen_on(subscription)
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

        subscription.start()
        tasks = [asyncio.create_task(claim_loop())]
        try:
            yield queue, due
        finally:
            waker.stop()
            await subscription.stop()
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
