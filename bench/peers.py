"""What the systems of the peers harness (queue_peers.py) have in common: the `Peer`
interface of the four scenarios, their options and results, and the helpers that time an
enqueue and the memory it took. The systems themselves: peer_systems.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

ENQUEUE_IN_FLIGHT = 20  # SAQ's max_concurrent_ops default; used for arq too
ID_BASE = 10_000_000  # dispatch ids look like a busy database's bigint ids
HOUR_MS = 3_600_000


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
