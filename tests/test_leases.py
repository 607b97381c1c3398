"""The invariants of `Leases`, the one owner of a worker's leases in flight, on real Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from dispatch_engine.queue import Lease, RedisQueue, Settlement, member
from dispatch_engine.worker import Leases

SENDER = 7


async def _claimed(queue: RedisQueue, ids: list[int]) -> list[Lease]:
    seconds, micros = await queue.redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    await queue.enqueue(SENDER, [(i, now_ms - 1) for i in ids])
    result = await queue.claim(len(ids))
    assert sorted(lease.dispatch_id for lease in result.leases) == sorted(ids)
    return result.leases


async def _expiry(queue: RedisQueue, lease: Lease) -> float | None:
    key = queue.shards[lease.shard].key("leases")
    return await queue.redis.zscore(key, member(lease.dispatch_id))


async def test_a_lease_is_in_flight_from_claim_until_settled_once(queue: RedisQueue) -> None:
    freed: list[int] = []
    leases = Leases(queue, capacity=5, on_freed=lambda: freed.append(len(leases)))
    claimed = await _claimed(queue, [1, 2, 3])
    leases.claimed(claimed)
    assert len(leases) == 3 and leases.free == 2
    assert all(lease in leases for lease in claimed)

    assert await leases.ack(claimed[:1]) == []
    assert claimed[0] not in leases and len(leases) == 2
    assert freed == [2]  # the claim loop hears of the free slot after the state changed
    assert await queue.leased_count() == 2

    # Settled once: a second settlement is a no-op here, counted, and refused by Redis.
    assert await leases.ack(claimed[:1]) == [1]
    assert leases.unknown == 1 and len(leases) == 2 and freed == [2]

    await leases.settle([Settlement(claimed[1], "retry", 0), Settlement(claimed[2], "release")])
    assert len(leases) == 0 and leases.free == 5 and leases.unknown == 1
    assert await queue.leased_count() == 0


async def test_settling_a_lease_never_claimed_changes_nothing_and_is_counted(
    queue: RedisQueue,
) -> None:
    leases = Leases(queue, capacity=5)
    held = await _claimed(queue, [1])
    leases.claimed(held)
    stranger = Lease(2, SENDER, held[0].token, held[0].shard)
    assert await leases.ack([stranger]) == [2]
    assert leases.unknown == 1 and leases.in_flight() == held


async def test_a_newer_claim_of_the_same_id_fences_off_the_older_lease(
    redis: Redis, queue: RedisQueue
) -> None:
    """An older lease expired and was reaped while its send hung; this worker claimed the id
    again. The old send's settlement must neither end the new lease nor count as it."""
    short = RedisQueue(redis, lease_ms=50)
    leases = Leases(queue, capacity=5)
    old = await _claimed(short, [1])
    leases.claimed(old)
    await asyncio.sleep(0.1)
    assert (await short.reap())[0] == 1
    new = (await queue.claim(1)).leases
    assert [lease.dispatch_id for lease in new] == [1] and new[0].token != old[0].token
    leases.claimed(new)
    assert leases.replaced == 1 and leases.in_flight() == new

    assert await leases.ack(old) == [1]  # stale token: Redis refuses it too
    assert leases.unknown == 1 and leases.in_flight() == new
    leases.abandon(old)  # nor does abandoning the old one touch the new one
    assert leases.in_flight() == new
    assert await leases.ack(new) == [] and len(leases) == 0


async def test_renewal_renews_exactly_the_leases_in_flight(queue: RedisQueue) -> None:
    leases = Leases(queue, capacity=5)
    kept, abandoned, acked = await _claimed(queue, [1, 2, 3])
    leases.claimed([kept, abandoned, acked])
    leases.abandon([abandoned])
    await leases.ack([acked])
    assert leases.in_flight() == [kept]
    before = {lease: await _expiry(queue, lease) for lease in (kept, abandoned)}
    await asyncio.sleep(0.05)
    assert await leases.renew() == []
    assert (await _expiry(queue, kept) or 0) > (before[kept] or 0)
    assert await _expiry(queue, abandoned) == before[abandoned]  # left to expire
    assert leases.unknown == 0  # abandoning is not a settlement

    leases.abandon([kept])
    assert await leases.renew() == [] and len(leases) == 0


async def test_at_stop_nothing_in_flight_remains_un_given_back(queue: RedisQueue) -> None:
    leases = Leases(queue, capacity=10)
    claimed = await _claimed(queue, [1, 2, 3, 4])
    leases.claimed(claimed)
    await leases.ack(claimed[:1])
    await leases.give_back_all()
    assert len(leases) == 0 and await queue.leased_count() == 0
    again = await queue.claim(10)  # given back: another worker claims them at once
    assert sorted(lease.dispatch_id for lease in again.leases) == [2, 3, 4]


async def test_leases_leave_even_when_redis_cannot_be_told(queue: RedisQueue) -> None:
    """Redis away at settle time: the leases still leave this worker (not renewed, so they
    expire and the reaper re-queues them), and the error reaches the caller."""
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    leases = Leases(RedisQueue(unreachable), capacity=5)
    leases.claimed(await _claimed(queue, [1, 2]))
    try:
        with pytest.raises(RedisConnectionError):
            await leases.give_back_all()
    finally:
        await unreachable.aclose()
    assert len(leases) == 0 and leases.unknown == 0
