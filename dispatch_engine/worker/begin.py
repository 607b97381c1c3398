"""Stage 4: the ledger says which granted emails start now (`store.begin_sends`).

One statement marks them `sending` and inserts their ledger rows. A row already `sent` means
a previous attempt went through: the dispatch is repaired and acked, not sent again. What
was cancelled or paused since the claim is dropped from the queue (its grants go back).
"""

from __future__ import annotations

import secrets

from ..message_ids import message_id_for
from ..models import DispatchJob
from ..pools.compiled import for_job
from ..pools.rotation import rehome
from ..queue import Lease, RedisQueue
from ..render import CompiledCampaign
from ..store import Store
from .leases import Leases


class Begin:
    def __init__(self, store: Store, leases: Leases, queue: RedisQueue) -> None:
        self.store = store
        self.leases = leases
        self.queue = queue

    async def batch(
        self,
        jobs: list[DispatchJob],
        compiled: dict[int, CompiledCampaign],
        by_id: dict[int, Lease],
    ) -> tuple[list[tuple[DispatchJob, str]], list[Lease]]:
        """(emails to send now with their Message-IDs, leases of emails sent already: to ack)."""
        if not jobs:
            return [], []
        senders = [for_job(compiled, j).sender for j in jobs]  # a pool's own
        message_ids = [
            message_id_for(j.idempotency_key, s.from_address)
            for j, s in zip(jobs, senders, strict=True)
        ]
        transports = [s.transport for s in senders]
        # One attempt token per batch: the claim's fencing token and a random part.
        token = f"{by_id[jobs[0].id].token}:{secrets.token_hex(4)}"
        started, already_sent = await self.store.begin_sends(
            [j.id for j in jobs], message_ids, transports, token, [s.id for s in senders]
        )
        if already_sent:
            await self.store.repair_sent(list(already_sent))
        unsent = [by_id[j.id] for j in jobs if j.id not in started and j.id not in already_sent]
        if unsent:  # cancelled or paused since the claim: their grants go back
            await self.leases.drop(unsent)
            # or moved to another sender of its pool meanwhile: to that sender's queue
            await rehome(
                self.queue, await self.store.queued_elsewhere([u.dispatch_id for u in unsent])
            )
        go = [(j, m) for j, m in zip(jobs, message_ids, strict=True) if j.id in started]
        return go, [by_id[i] for i in already_sent]
