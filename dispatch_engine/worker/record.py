"""Group commit of send results: record in PostgreSQL first, and only then settle them.

Send tasks put (outcome, lease) on `results`, a one-way queue; this stage takes what has
gathered and commits it in one transaction, then hands the batch on to `Settle`. A result
is never acknowledged before it is recorded: if PostgreSQL is away the recorder keeps it
and retries, and if this process dies the lease expires and the email is checked again
(the ledger says whether it went).
"""

from __future__ import annotations

import asyncio
import logging

from ..queue import Lease
from ..store import SendOutcome, Store
from .settle import Settle

log = logging.getLogger("dispatch_engine.worker")

RECORD_BATCH = 500
GATHER_S = 0.002  # a short wait lets a small batch grow: fewer commits, same send speed


class Recorder:
    def __init__(self, store: Store, settle: Settle) -> None:
        self.store = store
        self.settle = settle
        self.results: asyncio.Queue[tuple[SendOutcome, Lease]] = asyncio.Queue()
        self.stopping = False  # then a long outage gives up: the leases expire instead

    async def run(self) -> None:
        while True:
            batch = [await self.results.get()]
            if self.results.qsize() < RECORD_BATCH // 10:
                await asyncio.sleep(GATHER_S)
            while len(batch) < RECORD_BATCH and not self.results.empty():
                batch.append(self.results.get_nowait())
            try:
                if await self._record([o for o, _ in batch]):
                    await self.settle.recorded(batch)
            finally:
                for _ in batch:
                    self.results.task_done()

    async def _record(self, outcomes: list[SendOutcome]) -> bool:
        """Commit the outcomes, retrying while PostgreSQL is away; False: gave up at stop."""
        delay = 0.1
        while True:
            try:
                await self.store.record_outcomes(outcomes)
                return True
            except Exception:  # PostgreSQL away: keep the results, never ack unrecorded sends
                if self.stopping and delay > 5:
                    log.error("could not record %d results before stopping", len(outcomes))
                    return False
                log.warning("recording %d results failed; retrying", len(outcomes), exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
