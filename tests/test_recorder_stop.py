"""At stop, a recorder that cannot reach PostgreSQL gives up, and acknowledges nothing.

The worker's own stages (Recorder, Settle, Leases) on the suite's real Redis; the store's
connection pool is closed, so every write fails as when PostgreSQL cannot be reached.
"""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest
from redis.asyncio import Redis

from dispatch_engine.config import Settings
from dispatch_engine.db import create_pool
from dispatch_engine.hooks import Hooks
from dispatch_engine.models import DispatchStatus
from dispatch_engine.pacing import Pacer
from dispatch_engine.queue import Lease, RedisQueue
from dispatch_engine.secretbox import secret_box
from dispatch_engine.store import SendOutcome, Store
from dispatch_engine.transport import TransportRegistry
from dispatch_engine.worker import Leases
from dispatch_engine.worker.deps import WorkerDeps
from dispatch_engine.worker.record import Recorder
from dispatch_engine.worker.settle import Settle

from .support.helpers import wait_for


async def _stopping_recorder(
    settings: Settings, queue: RedisQueue, redis: Redis, pool: asyncpg.Pool
) -> tuple[Recorder, Leases, Lease]:
    """A stopping recorder of a store that cannot reach PostgreSQL, one sent result in it."""
    assert settings.database_url
    away = await create_pool(settings.database_url, min_size=1, max_size=1)
    await away.close()  # PostgreSQL cannot be reached: every write of this store fails
    store = Store(away)
    deps = WorkerDeps(
        settings=settings,
        store=store,
        queue=queue,
        redis=redis,
        transports=TransportRegistry([], settings, pool, secret_box(settings)),
        pacer=Pacer([]),
        hooks=Hooks.none(settings),
    )
    leases = Leases(queue, capacity=5)
    seconds, micros = await redis.time()
    await queue.enqueue(3, [(41, int(seconds) * 1000 + int(micros) // 1000 - 1)])
    claimed = (await queue.claim(1)).leases
    leases.claimed(claimed)
    recorder = Recorder(store, Settle(deps, leases))
    recorder.stopping = True  # the process is stopping: a long outage gives up
    sent = SendOutcome(41, bytes(16), DispatchStatus.SENT, 1, "a@example.com", "<m@x>")
    await recorder.results.put((sent, claimed[0]))
    return recorder, leases, claimed[0]


@pytest.mark.timeout(60)  # the give-up comes after 6.3 s of back-off
async def test_a_recorder_stopping_during_an_outage_gives_up_without_acking(
    settings: Settings, queue: RedisQueue, redis: Redis, pool: asyncpg.Pool
) -> None:
    recorder, leases, lease = await _stopping_recorder(settings, queue, redis, pool)
    task = asyncio.create_task(recorder.run())
    try:
        await asyncio.wait_for(recorder.results.join(), 30)  # given up on: the stop goes on
    finally:
        task.cancel()
    # Not recorded, so not acked: the lease stays in Redis (it expires, and the email is
    # checked again by the next worker), and this process still holds it to give back.
    assert await queue.leased_count() == 1
    assert lease in leases


async def test_a_recorder_stopping_outlasts_a_short_outage_and_records(
    settings: Settings,
    queue: RedisQueue,
    redis: Redis,
    pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder, leases, lease = await _stopping_recorder(settings, queue, redis, pool)
    task = asyncio.create_task(recorder.run())
    joined = asyncio.create_task(recorder.results.join())

    async def failed_once() -> bool:
        return joined.done() or "results failed; retrying" in caplog.text

    try:
        await wait_for(failed_once)
        recorder.store.pool = pool  # PostgreSQL is back after one failed write
        await asyncio.wait_for(joined, 30)
    finally:
        task.cancel()
    # A blip while stopping is waited out: the result is recorded, then acked.
    assert await queue.leased_count() == 0
    assert lease not in leases


async def test_an_ack_redis_cannot_take_does_not_stop_the_recorder(
    settings: Settings, store: Store, redis: Redis, pool: asyncpg.Pool
) -> None:
    with socket.socket() as probe:  # a port nothing listens on: Redis cannot be reached
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    queue = RedisQueue(unreachable)
    deps = WorkerDeps(
        settings=settings,
        store=store,
        queue=queue,
        redis=redis,
        transports=TransportRegistry([], settings, pool, secret_box(settings)),
        pacer=Pacer([]),
        hooks=Hooks.none(settings),
    )
    recorder = Recorder(store, Settle(deps, Leases(queue, capacity=5)))
    task = asyncio.create_task(recorder.run())
    try:
        for dispatch_id in (51, 52):  # one batch each: the second comes after a failed ack
            sent = SendOutcome(dispatch_id, bytes(16), DispatchStatus.SENT, 1, "a@example.com")
            await recorder.results.put((sent, Lease(dispatch_id, 3, "1", 0)))
            await asyncio.wait_for(recorder.results.join(), 10)
        # Both recorded and counted; their leases expire in Redis and are checked again.
        assert recorder.settle.sent == 2
        assert not task.done(), "the recorder stopped after an ack failed"
    finally:
        task.cancel()
        await unreachable.aclose()


async def test_progress_that_postgresql_cannot_fold_now_is_folded_next_time(
    settings: Settings, queue: RedisQueue, redis: Redis, pool: asyncpg.Pool
) -> None:
    away = await create_pool(settings.database_url or "", min_size=1, max_size=1)
    await away.close()  # PostgreSQL cannot be reached
    deps = WorkerDeps(
        settings=settings,
        store=Store(away),
        queue=queue,
        redis=redis,
        transports=TransportRegistry([], settings, pool, secret_box(settings)),
        pacer=Pacer([]),
        hooks=Hooks.none(settings),
    )
    settle = Settle(deps, Leases(queue, capacity=5))
    failed = SendOutcome(61, bytes(16), DispatchStatus.FAILED, 7, "a@example.com", error="x")
    await settle.announce_failed([failed])  # campaign 7's progress has changed
    await settle.flush_progress()  # the update fails: logged, not raised (the loop goes on)
    assert settle._touched == {7}, "kept for the next fold"
