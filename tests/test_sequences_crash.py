"""The sequencer dies mid-batch and starts again: no step is made twice, none is lost."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dispatch_engine.config import Settings
from dispatch_engine.queue import RedisQueue
from dispatch_engine.sequences.sequencer import Sequencer
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import new_token, wait_for
from .support.processes import Proc
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


@pytest.mark.timeout(180)  # 2,000 recipients, two steps, three processes
async def test_a_sequencer_process_killed_while_making_steps_makes_each_once_after_restart(
    make_client: Start, settings: Settings, store: Store, env: dict[str, str], tmp_path: Path
) -> None:
    """A real `dispatch-engine run --role sweeper` SIGKILLed as soon as its first batch of
    follow-ups is committed (4 batches of 500 to make), then started again."""
    days = replace(settings, day_seconds=1)
    client = await make_client(days, {"api", "worker"})
    people = [f"k{i}@example.com" for i in range(2000)]
    payload = sequence_payload(people)
    payload["steps"] = payload["steps"][:1]
    await schedule(client, await new_token(store), payload)

    async def count(sql: str) -> int:
        return int(await store.pool.fetchval(sql))

    async def all_due() -> bool:
        return await count(
            "SELECT count(*) FROM sequence_members WHERE state = 'waiting' AND next_due_at <= now()"
        ) == len(people)

    await wait_for(all_due, within=120)
    await client.close()
    sweeper_env = {**env, "DISPATCH_DAY_SECONDS": "1"}
    first = Proc(["run", "--role", "sweeper"], sweeper_env, tmp_path / "sweeper1.log")

    async def some_made() -> bool:
        return await count("SELECT count(*) FROM dispatches WHERE step = 1") > 0

    await wait_for(some_made, within=60)
    first.kill()
    made_before = await count("SELECT count(*) FROM dispatches WHERE step = 1")
    print(f"follow-ups made before the kill: {made_before} of {len(people)}")
    again = Proc(["run", "--role", "sweeper"], sweeper_env, tmp_path / "sweeper2.log")

    async def all_made() -> bool:
        return await count("SELECT count(*) FROM sequence_members WHERE state = 'waiting'") == 0

    await wait_for(all_made, within=60)
    made = await count("SELECT count(*) FROM dispatches WHERE step = 1")
    distinct = await count("SELECT count(DISTINCT first_id) FROM dispatches WHERE step = 1")
    assert made == distinct == len(people), f"{made_before} made before the kill"
    await make_client(days, {"worker"})

    async def all_finished() -> bool:
        return await count("SELECT count(*) FROM sequence_members WHERE state = 'finished'") == len(
            people
        )

    await wait_for(all_finished, within=120)
    assert again.stop() == 0
    assert await count("SELECT count(*) FROM captured_messages") == 2 * len(people)
    assert await count("SELECT count(*) FROM captured_messages WHERE deliveries > 1") == 0
