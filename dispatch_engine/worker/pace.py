"""Stage 3: pacing decides once per sender of a batch; only what it grants goes on.

What a campaign cap holds back is queued again for the window it fits in (the sender's
other campaigns go on); what a sender limit holds back is given back in order and the
sender is parked (`defer_sender`), with `sender_limited` fired when a limit, not the gap,
parked it.
"""

from __future__ import annotations

import random

from ..hooks import Hooks
from ..models import DispatchJob
from ..pacing import WaitReason, pacing_request
from ..queue import Lease, Settlement
from ..render import CompiledCampaign
from .deps import WorkerDeps
from .leases import Leases


async def sender_limited(hooks: Hooks, sender_id: int, resume_at_ms: int, reason: str) -> None:
    """The one call of the `sender_limited` hook: pacing parked the sender, or its provider."""
    await hooks.sender_limited(sender_id=sender_id, resume_at_ms=resume_at_ms, reason=reason)


class Pace:
    def __init__(self, deps: WorkerDeps, leases: Leases) -> None:
        self.settings = deps.settings
        self.store = deps.store
        self.queue = deps.queue
        self.pacer = deps.pacer
        self.hooks = deps.hooks
        self.metrics = deps.metrics
        self.leases = leases

    async def batch(
        self,
        jobs: list[DispatchJob],
        compiled: dict[int, CompiledCampaign],
        by_id: dict[int, Lease],
        now_ms: int,
    ) -> list[DispatchJob]:
        """The emails of the batch that may go now, sender by sender."""
        by_sender: dict[int, list[DispatchJob]] = {}
        for job in jobs:
            by_sender.setdefault(job.sender_id, []).append(job)
        go: list[DispatchJob] = []
        for sender_id, group in by_sender.items():
            go.extend(await self._sender(sender_id, group, compiled, by_id, now_ms))
        return go

    async def _sender(
        self,
        sender_id: int,
        group: list[DispatchJob],
        compiled: dict[int, CompiledCampaign],
        by_id: dict[int, Lease],
        now_ms: int,
    ) -> list[DispatchJob]:
        day_ms = self.settings.day_seconds * 1000
        request = pacing_request(sender_id, group, compiled, now_ms, day_ms)
        outcome = await self.pacer.decide(request)
        if outcome.deferred:
            await self.leases.settle(
                [Settlement(by_id[i], "retry", due) for i, due, _ in outcome.deferred]
            )
            waits: dict[tuple[WaitReason, int], list[int]] = {}
            for i, due, why in outcome.deferred:
                waits.setdefault((why, due), []).append(i)
            for (why, due), ids in waits.items():
                await self.store.mark_waiting(ids, why, due)
        if outcome.held:
            await self.leases.release([by_id[i] for i in outcome.held])
        if outcome.held and outcome.resume_at_ms is not None:
            # A little jitter spreads the restart of many parked senders; a tenth of the wait
            # at most, so a 50 ms gap stays about 50 ms.
            wait_ms = max(0, outcome.resume_at_ms - now_ms)
            resume = outcome.resume_at_ms + random.randint(0, min(250, wait_ms // 10))
            reason = outcome.reason if outcome.limited else None
            if reason is not None:  # before the park, so a parked sender's emails say why
                await self.store.mark_waiting(outcome.held, reason, resume)
            await self.queue.defer_sender(sender_id, resume)
            self.metrics.pacing_parks.labels("pacing").inc()
            if reason is not None:
                await sender_limited(self.hooks, sender_id, resume, outcome.detail)
        granted = set(outcome.granted)
        return [job for job in group if job.id in granted]
