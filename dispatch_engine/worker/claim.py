"""Stage 1: lease due ids in batches while send slots are free, and pass each batch down the
stages in order: prepare → share → pace → begin → send. What a stage finishes without a
send (gone, finished, cancelled, failed to prepare, sent already) is acked at the end, in
one call with the rest of the batch's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from ..models import QUEUED_STATES, CampaignStatus, DispatchJob
from ..pools.compiled import for_job
from ..pools.rotation import rehome
from ..queue import Lease, Waker
from .begin import Begin
from .deps import WorkerDeps
from .hours import RecipientHours
from .leases import Leases
from .pace import Pace
from .prepare import Prepare
from .send import Send
from .share import OwnerShare

log = logging.getLogger("dispatch_engine.worker")

SENDABLE = (CampaignStatus.SCHEDULED, CampaignStatus.RUNNING)


@dataclass(frozen=True)
class Downstream:
    """The stages a claimed batch passes through, in this order."""

    prepare: Prepare
    hours: RecipientHours
    share: OwnerShare
    pace: Pace
    begin: Begin
    send: Send


class Claim:
    def __init__(
        self, deps: WorkerDeps, leases: Leases, waker: Waker, downstream: Downstream
    ) -> None:
        self.settings = deps.settings
        self.store = deps.store
        self.queue = deps.queue
        self.leases = leases
        self.waker = waker
        self.prepare = downstream.prepare
        self.hours = downstream.hours
        self.share = downstream.share
        self.pace = downstream.pace
        self.begin = downstream.begin
        self.send = downstream.send
        self.stopping = False

    async def run(self) -> None:
        batch_size = self.settings.worker_batch_size
        while not self.stopping:
            free = self.leases.free
            if free < self.share.worth_claiming(batch_size):
                await self.waker.wait(1.0)  # woken as soon as sends finish
                continue
            try:
                result = await self.queue.claim(min(batch_size, free))
            except Exception:
                log.exception("claim failed; retrying")
                await self.waker.wait(1.0)
                continue
            if not result.leases:
                await self.waker.until_due(result)
                continue
            self.leases.claimed(result.leases)
            try:
                if not await self._start_batch(result.leases, result.now_ms):
                    # All given back for the fair share: wait for a send of theirs to end.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.share.freed.wait(), 1.0)
            except Exception:
                # Leases stay held and expire; the reaper hands them to another worker.
                log.exception("could not start a batch of %d", len(result.leases))
                self.leases.abandon(result.leases)
                await self.waker.wait(1.0)

    async def _moved_off(
        self, jobs: list[DispatchJob], by_id: dict[int, Lease]
    ) -> list[DispatchJob]:
        """A pool's email moved to another sender since this lease was taken (pools/rotation.py):
        nothing is sent under this lease; the id goes to its sender's queue."""
        moved = [j for j in jobs if j.sender_id != by_id[j.id].sender_id]
        if not moved:
            return jobs
        await self.leases.ack([by_id[j.id] for j in moved])
        await rehome(self.queue, await self.store.queued_elsewhere([j.id for j in moved]))
        return [j for j in jobs if j.sender_id == by_id[j.id].sender_id]

    async def _start_batch(self, leases: list[Lease], now_ms: int) -> bool:
        """Start what may go of a claimed batch; False when the fair share held back all."""
        by_id = {lease.dispatch_id: lease for lease in leases}
        jobs = await self.store.load_jobs(list(by_id))
        done: list[Lease] = [by_id[i] for i in set(by_id) - {j.id for j in jobs}]
        jobs = await self._moved_off(jobs, by_id)
        runnable: list[DispatchJob] = []
        for job in jobs:
            if job.status in QUEUED_STATES and job.campaign_status in SENDABLE:
                runnable.append(job)
            else:  # finished, cancelled or paused: nothing to send, drop from the queue
                done.append(by_id[job.id])
        runnable, compiled, failed = await self.prepare.batch(runnable)
        done += [by_id[j.id] for j in failed]
        runnable = await self.hours.batch(runnable, compiled, by_id, now_ms)
        runnable, held = self.share.admit(runnable)
        if held:  # over their owner's fair share of the send slots: back to the queue
            await self.leases.release([by_id[j.id] for j in held])
        go = await self.pace.batch(runnable, compiled, by_id, now_ms)
        started, sent_already = await self.begin.batch(go, compiled, by_id)
        done += sent_already
        for job, message_id in started:
            compiled_job = for_job(compiled, job)  # its pool sender's
            await self.send.start(job, compiled_job, message_id, by_id[job.id])
        if done:
            await self.leases.ack(done)
        return bool(runnable) or not held
