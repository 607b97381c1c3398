"""The sequencer dies mid-batch and starts again: no step is made twice, none is lost."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from dispatch_engine.config import Settings
from dispatch_engine.queue import RedisQueue
from dispatch_engine.sequences.sequencer import Sequencer
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import new_token, wait_for
from .test_sequences import received, schedule, sequence_payload, until_states

PEOPLE = 60


class DiesAfterItsFirstCommit:
    """A queue whose first enqueue kills the sequencer: the process dies after its batch's
    transaction committed and before Redis heard of it (fault injection on the real queue)."""

    def __init__(self, queue: RedisQueue) -> None:
        self.queue = queue
        self.calls = 0

    async def enqueue(self, *args: Any, **kwargs: Any) -> int:
        self.calls += 1
        raise RuntimeError("killed")


async def test_a_sequencer_killed_mid_batch_and_restarted_makes_each_step_once(
    make_client: Start, settings: Settings, store: Store, queue: RedisQueue
) -> None:
    days = replace(settings, day_seconds=1)
    client = await make_client(days, {"api", "worker"})
    people = [f"p{i}@example.com" for i in range(PEOPLE)]
    payload = sequence_payload(people)
    payload["steps"] = payload["steps"][:1]
    campaign_id = await schedule(client, await new_token(store), payload)
    await until_states(store, campaign_id, {p: "waiting" for p in people})
    await client.close()

    async def all_due() -> bool:
        due = await store.pool.fetchval(
            "SELECT count(*) FROM sequence_members WHERE next_due_at <= now()"
        )
        return int(due) == PEOPLE

    await wait_for(all_due)
    dying = Sequencer(store, DiesAfterItsFirstCommit(queue), day_seconds=1, batch=20)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="killed"):
        await dying.make_due()
    made = await store.pool.fetchval("SELECT count(*) FROM dispatches WHERE step = 1")
    assert made == 20  # one batch committed, none of it in Redis

    restarted = Sequencer(store, queue, day_seconds=1, batch=20)
    assert await restarted.make_due() == PEOPLE - 20
    # As if members' moves were lost (an overlapping leader, a restore): their step's own
    # idempotency key still makes none twice; they find the dispatch made before.
    await store.pool.execute(
        """UPDATE sequence_members SET state = 'waiting', step = 0, next_due_at = now()
           WHERE recipient IN ('p0@example.com', 'p59@example.com')"""
    )
    assert await restarted.make_due() == 2
    twice = await store.pool.fetchval(
        """SELECT count(*) FROM (SELECT first_id FROM dispatches WHERE step = 1
           GROUP BY first_id HAVING count(*) > 1) d"""
    )
    assert twice == 0

    await make_client(days, {"worker", "sweeper"})  # the sweeper re-queues the first batch
    await until_states(store, campaign_id, {p: "finished" for p in people})
    for person in people:
        assert len(await received(store, person)) == 2, person
    resent = await store.pool.fetchval(
        "SELECT count(*) FROM captured_messages WHERE deliveries > 1"
    )
    assert resent == 0
