"""The Redis queue against a real server: atomic claims, fencing, reaping, fairness."""

from __future__ import annotations

import asyncio
from collections import Counter
from functools import partial
from typing import cast

from redis.asyncio import Redis

from dispatch_engine.config import Settings
from dispatch_engine.events import Subscription
from dispatch_engine.queue import Lease, RedisQueue, Waker, dispatch_id_of, member
from dispatch_engine.redis_client import MAX_CONNECTIONS, connect_redis

from .support.helpers import wait_for


async def _now_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_concurrent_claimers_claim_each_id_exactly_once(settings: Settings) -> None:
    assert settings.redis_url
    clients = [Redis.from_url(settings.redis_url) for _ in range(8)]
    queues = [RedisQueue(c, lease_ms=60_000) for c in clients]
    now = await _now_ms(clients[0])
    for sender in range(1, 6):
        await queues[0].enqueue(sender, [(sender * 100_000 + i, now - 1) for i in range(1000)])

    claimed: list[int] = []

    async def claimer(queue: RedisQueue) -> None:
        while True:
            result = await queue.claim(37)
            if not result.leases:
                return
            claimed.extend(lease.dispatch_id for lease in result.leases)
            await queue.ack(result.leases)

    await asyncio.gather(*(claimer(q) for q in queues))
    counts = Counter(claimed)
    assert len(counts) == 5000
    assert max(counts.values()) == 1
    for client in clients:
        await client.aclose()


async def test_claim_is_round_robin_across_senders(queue: RedisQueue, redis: Redis) -> None:
    now = await _now_ms(redis)
    await queue.enqueue(1, [(i, now - 10_000 + i) for i in range(1, 1001)])  # a big campaign
    await queue.enqueue(2, [(5001, now - 1), (5002, now - 1)])  # a small one, due later
    result = await queue.claim(10)
    senders = Counter(lease.sender_id for lease in result.leases)
    assert senders[2] == 2, "the small campaign must not wait behind the big one"
    assert senders[1] == 8


async def test_stale_token_is_refused(queue: RedisQueue, redis: Redis) -> None:
    now = await _now_ms(redis)
    await queue.enqueue(1, [(42, now - 1)])
    fast = RedisQueue(redis, lease_ms=1)
    first = (await fast.claim(1)).leases[0]
    await asyncio.sleep(0.01)
    reaped, dead = await queue.reap()
    assert (reaped, dead) == (1, [])
    second = (await queue.claim(1)).leases[0]
    assert second.dispatch_id == 42 and second.token != first.token
    assert await queue.ack([first]) == [42], "the late worker's ack must be refused"
    assert await queue.ack([second]) == []
    assert await queue.leased_count() == 0


async def test_a_late_worker_cannot_renew_a_lease_it_lost(queue: RedisQueue, redis: Redis) -> None:
    now = await _now_ms(redis)
    await queue.enqueue(1, [(43, now - 1)])
    fast = RedisQueue(redis, lease_ms=1)
    first = (await fast.claim(1)).leases[0]
    await asyncio.sleep(0.01)
    assert await queue.reap() == (1, [])
    second = (await queue.claim(1)).leases[0]
    assert await queue.renew([first]) == [43], "the late worker is told it lost the lease"
    assert await queue.renew([second]) == []
    assert await queue.ack([second]) == []


async def test_expired_lease_comes_back_and_gives_up_after_max_stalls(
    redis: Redis,
) -> None:
    queue = RedisQueue(redis, lease_ms=1)
    now = await _now_ms(redis)
    await queue.enqueue(7, [(70, now - 1)])
    for _ in range(3):
        assert [lease.dispatch_id for lease in (await queue.claim(5)).leases] == [70]
        await asyncio.sleep(0.01)
        assert await queue.reap(max_stalls=3) == (1, [])
    assert [lease.dispatch_id for lease in (await queue.claim(5)).leases] == [70]
    await asyncio.sleep(0.01)
    assert await queue.reap(max_stalls=3) == (1, [70])
    assert (await queue.claim(5)).leases == []


async def test_enqueue_is_idempotent_and_skips_leased_ids(queue: RedisQueue, redis: Redis) -> None:
    now = await _now_ms(redis)
    assert await queue.enqueue(3, [(1, now - 1), (2, now + 60_000)]) == 2
    assert await queue.enqueue(3, [(1, now - 1), (2, now + 60_000)]) == 0
    lease = (await queue.claim(10)).leases
    assert [x.dispatch_id for x in lease] == [1]
    assert await queue.enqueue(3, [(1, now - 1)]) == 0, "a leased id must not be queued twice"
    assert await queue.depth(3) == 1


async def test_enqueue_again_keeps_the_due_time_an_id_already_has(
    queue: RedisQueue, redis: Redis
) -> None:
    now = await _now_ms(redis)
    await queue.enqueue(3, [(5, now + 60_000)])  # e.g. a retry moved it an hour on
    assert await queue.enqueue(3, [(5, now - 1)]) == 0  # a recovery pass re-adds it
    assert await redis.zscore("dispatch:{q0}:s:3", member(5)) == now + 60_000
    assert (await queue.claim(10)).leases == []


async def test_removed_ids_are_never_claimed(queue: RedisQueue, redis: Redis) -> None:
    now = await _now_ms(redis)
    await queue.enqueue(4, [(i, now - 1) for i in range(1, 6)])
    assert await queue.remove(4, [1, 3, 5]) == 3  # a paused or cancelled campaign's ids
    assert await queue.depth(4) == 2
    assert [x.dispatch_id for x in (await queue.claim(10)).leases] == [2, 4]


async def test_sender_state_reports_depth_next_due_and_a_park_only_while_it_lasts(
    queue: RedisQueue, redis: Redis
) -> None:
    now = await _now_ms(redis)
    await queue.enqueue(21, [(2101, now + 5000), (2102, now + 6000)])
    state = await queue.sender_state(21)
    assert (state["queue_depth"], state["next_due_ms"]) == (2, now + 5000)
    assert state["parked_until_ms"] is None
    await queue.defer_sender(21, now - 1)  # a park that is already over
    assert (await queue.sender_state(21))["parked_until_ms"] is None
    await queue.defer_sender(21, now + 60_000)
    assert (await queue.sender_state(21))["parked_until_ms"] == now + 60_000


async def test_deepest_senders_come_first_with_their_backlog(redis: Redis) -> None:
    queue = RedisQueue(redis, shards=2)
    now = await _now_ms(redis)
    for sender, depth in ((31, 1), (32, 3), (33, 2)):
        await queue.enqueue(sender, [(sender * 10 + i, now + 60_000) for i in range(depth)])
    assert await queue.deepest_senders() == [(32, 3), (33, 2), (31, 1)]
    assert await queue.deepest_senders(limit=1) == [(32, 3)]


async def test_empty_claim_reports_the_next_due_time(queue: RedisQueue, redis: Redis) -> None:
    result = await queue.claim(10)
    assert result.leases == [] and result.next_due_ms is None
    now = await _now_ms(redis)
    await queue.enqueue(4, [(9, now + 5000)])
    result = await queue.claim(10)
    assert result.leases == []
    assert result.next_due_ms == now + 5000


async def test_an_empty_claim_over_shards_reports_the_earliest_due_time(redis: Redis) -> None:
    queue = RedisQueue(redis, shards=4)
    now = await _now_ms(redis)
    dues = {sender: now + 60_000 - sender * 1000 for sender in range(1, 9)}
    for sender, due in dues.items():
        await queue.enqueue(sender, [(sender * 10, due)])
    assert len({queue.shard_of(s).shard for s in dues}) > 1
    result = await queue.claim(10)
    assert result.leases == [] and result.next_due_ms == min(dues.values())


async def test_defer_sender_parks_it_and_keeps_order(queue: RedisQueue, redis: Redis) -> None:
    now = await _now_ms(redis)
    await queue.enqueue(5, [(i, now - 100 + i) for i in range(1, 6)])
    first = (await queue.claim(2)).leases
    assert [x.dispatch_id for x in first] == [1, 2]
    await queue.release(first[1:])
    await queue.defer_sender(5, now + 60_000)
    parked = await queue.claim(10)
    assert parked.leases == [] and parked.next_due_ms == now + 60_000
    await queue.defer_sender(5, now - 1)  # an earlier time never shortens a park
    assert (await queue.claim(10)).leases == []

    await queue.enqueue(8, [(80, now - 1)])
    await queue.defer_sender(8, now + 300)  # a short park: it ends by itself
    assert (await queue.claim(10)).leases == []
    leases: list[Lease] = []
    while not leases:
        leases = (await queue.claim(10)).leases
    assert (await _now_ms(redis)) >= now + 300
    assert [x.dispatch_id for x in leases] == [80]
    # the long-parked sender's backlog is intact and in order
    queued = cast(list[bytes], await redis.zrange("dispatch:{q0}:s:5", 0, -1))
    assert [dispatch_id_of(m) for m in queued] == [2, 3, 4, 5]


async def test_retry_moves_the_id_to_its_new_due_time(queue: RedisQueue, redis: Redis) -> None:
    now = await _now_ms(redis)
    await queue.enqueue(6, [(61, now - 1)])
    lease = (await queue.claim(1)).leases[0]
    assert await queue.retry(lease, now + 30_000) == []
    assert await redis.zscore("dispatch:{q0}:s:6", member(61)) == now + 30_000


async def test_a_retried_or_given_back_id_makes_its_idle_sender_ready_again(
    queue: RedisQueue, redis: Redis
) -> None:
    now = await _now_ms(redis)
    await queue.enqueue(6, [(62, now - 1)])
    lease = (await queue.claim(10)).leases[0]  # the sender has nothing else queued now
    assert await queue.retry(lease, now - 1) == []
    again = (await queue.claim(10)).leases
    assert [x.dispatch_id for x in again] == [62], "a retry that is due is claimed again"
    assert await queue.release(again) == []
    assert [x.dispatch_id for x in (await queue.claim(10)).leases] == [62]


async def test_shards_spread_senders_and_claim_from_all(redis: Redis) -> None:
    queue = RedisQueue(redis, shards=4)
    now = await _now_ms(redis)
    for sender in range(1, 9):
        await queue.enqueue(sender, [(sender * 10, now - 1)])
    assert len({queue.shard_of(s).shard for s in range(1, 9)}) > 1
    got: list[int] = []
    for _ in range(8):
        got += [x.dispatch_id for x in (await queue.claim(10)).leases]
    assert sorted(got) == [s * 10 for s in range(1, 9)]


async def test_ids_due_at_the_same_time_come_out_in_id_order(
    queue: RedisQueue, redis: Redis
) -> None:
    now = await _now_ms(redis)
    await queue.enqueue(9, [(i, now - 1) for i in (10, 2, 100, 9, 1)])
    assert [x.dispatch_id for x in (await queue.claim(10)).leases] == [1, 2, 9, 10, 100]


async def test_a_burst_beyond_the_connection_cap_waits_instead_of_failing(
    settings: Settings,
) -> None:
    clients = connect_redis(settings)
    key = f"dispatch:test:burst:{id(clients)}"
    try:
        # Each BLPOP holds a connection for 0.2 s; three times the cap must queue, not raise.
        results = await asyncio.gather(
            *(clients.data.blpop([key], timeout=0.2) for _ in range(3 * MAX_CONNECTIONS))
        )
    finally:
        await clients.aclose()
    assert results == [None] * (3 * MAX_CONNECTIONS)


async def _claim_when_due(queue: RedisQueue, waker: Waker) -> list[int]:
    """The worker's loop: claim, and after an empty claim sleep in the waker."""
    while True:
        result = await queue.claim(10)
        if result.leases:
            return [lease.dispatch_id for lease in result.leases]
        await waker.until_due(result)


async def test_waker_is_woken_by_an_enqueue_and_sleeps_until_the_due_time(
    queue: RedisQueue, redis: Redis
) -> None:
    waker = Waker(idle_cap_s=300)  # only a wake-up can end the first sleep in time
    subscription = Subscription(redis)
    waker.listen_on(subscription)
    subscription.start()
    await asyncio.wait_for(subscription.ready.wait(), 30)
    claimer = asyncio.create_task(_claim_when_due(queue, waker))
    try:
        await asyncio.sleep(0.2)  # asleep after an empty claim
        assert not claimer.done()
        await queue.enqueue(3, [(31, await _now_ms(redis) + 300)])
        assert await asyncio.wait_for(claimer, 30) == [31]
    finally:
        waker.stop()
        await subscription.stop()
        await asyncio.gather(claimer, return_exceptions=True)


async def test_waker_stop_ends_a_sleep_and_later_waits(redis: Redis) -> None:
    waker = Waker(idle_cap_s=300)
    sleeper = asyncio.create_task(waker.wait(300))
    await asyncio.sleep(0)
    assert not sleeper.done(), "a wait sleeps until it is ended"
    waker.stop()
    await asyncio.wait_for(sleeper, 30)
    await asyncio.wait_for(waker.wait(300), 30)  # stopped: returns at once


async def _clock_passed(redis: Redis, ms: int) -> bool:
    return await _now_ms(redis) > ms


async def test_every_due_sender_is_served_when_there_are_more_senders_than_a_batch(
    queue: RedisQueue, redis: Redis
) -> None:
    """30 due senders, batches of 10: each sender is served within 3 claims, then again."""
    now = await _now_ms(redis)
    senders = range(1, 31)
    for sender in senders:
        # older senders first: without re-scoring, senders 1-10 would take every batch
        await queue.enqueue(sender, [(sender * 100 + i, now - 10_000 + sender) for i in range(5)])
    served: list[Counter[int]] = []
    for _ in range(6):
        result = await queue.claim(10)
        leases = result.leases
        assert len(leases) == 10
        await wait_for(partial(_clock_passed, redis, result.now_ms))  # one ms would tie
        served.append(Counter(lease.sender_id for lease in leases))
        await queue.ack(leases)
    first_round = sum(served[:3], Counter())
    second_round = sum(served[3:], Counter())
    assert set(first_round) == set(senders), "a sender starved behind the first batch"
    assert set(second_round) == set(senders), "the second round of claims is fair too"
    assert max(first_round.values()) == 1 and max(second_round.values()) == 1


async def test_a_capped_sender_gives_a_claim_no_more_than_its_cap(
    queue: RedisQueue, redis: Redis
) -> None:
    """A gap-paced sender (cap 1) must not fill a batch it would only give back."""
    now = await _now_ms(redis)
    await queue.enqueue(11, [(1100 + i, now - 1) for i in range(5)], claim_cap=1)
    await queue.enqueue(12, [(1200 + i, now - 1) for i in range(5)])
    senders = Counter(lease.sender_id for lease in (await queue.claim(10)).leases)
    assert senders == Counter({11: 1, 12: 5})
