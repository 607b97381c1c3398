"""The sequencer: makes each follow-up's dispatch once the previous step was sent and its
wait has passed, and queues it like any dispatch (its campaign's sender, its pacing).

It runs in the sweeper role and acts only while that process holds the sweeper's leader lock
(one sequencer at a time); should two ever overlap, `FOR UPDATE SKIP LOCKED` and each step's
own idempotency key still make every step once. No busy polling: it sleeps until the earliest
next due time, re-checked at most every `recheck_s` = min(60 s, one pacing day). A member
starts waiting when its step is sent, for at least one day, so a check once a day-length
finds it before it is due and the timer then fires on time (docs/sequences.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ..pacing import claim_cap
from ..queue import RedisQueue
from ..store import Store

log = logging.getLogger("dispatch_engine.sequences")

BATCH = 500  # members per transaction
MAX_RECHECK_S = 60.0
LEADER_CHECK_S = 1.0  # how soon a new leader starts


class Sequencer:
    def __init__(
        self,
        store: Store,
        queue: RedisQueue,
        *,
        day_seconds: int,
        is_leader: Callable[[], bool] = lambda: True,
        batch: int = BATCH,
    ) -> None:
        self.store = store
        self.queue = queue
        self.is_leader = is_leader
        self.batch = batch
        self.recheck_s = min(MAX_RECHECK_S, float(day_seconds))
        self.made = 0  # follow-ups made by this process (for tests and logs)

    async def make_due(self) -> int:
        """Make and queue every follow-up due now, a batch per transaction."""
        made = 0
        while True:
            rows = await self.store.make_due_steps(self.batch)
            if rows:
                await self._enqueue(rows)
            made += len(rows)
            if len(rows) < self.batch:
                break
        if made:
            self.made += made
            log.info("made %d follow-up dispatches", made)
        return made

    async def _enqueue(self, rows: list[Any]) -> None:
        by_sender: dict[int, list[tuple[int, int]]] = defaultdict(list)
        caps: dict[int, int] = {}
        for r in rows:
            by_sender[r["sender_id"]].append((r["id"], int(r["scheduled_at"].timestamp() * 1000)))
            cap = claim_cap(r["sender_limit"], max(r["delay_between_ms"], r["min_gap_ms"]))
            caps[r["sender_id"]] = min(cap, caps.get(r["sender_id"], cap))
        for sender_id, items in by_sender.items():
            await self.queue.enqueue(sender_id, items, claim_cap=caps[sender_id])
        for campaign_id in {r["campaign_id"] for r in rows}:  # the outbox marker, as schedule
            await self.store.mark_enqueued(campaign_id, True)

    async def wait_s(self) -> float:
        """How long to sleep: until the earliest waiting member is due, at most recheck_s."""
        due_in = await self.store.next_step_due_in()
        return self.recheck_s if due_in is None else max(0.0, min(self.recheck_s, due_in))

    async def run(self) -> None:
        while True:
            if not self.is_leader():  # an in-memory flag: waiting for it sends no command
                await asyncio.sleep(LEADER_CHECK_S)
                continue
            delay = self.recheck_s
            try:
                await self.make_due()
                delay = await self.wait_s()
            except Exception:
                log.warning("the sequencer's pass failed; trying again", exc_info=True)
            await asyncio.sleep(max(delay, 0.01))
