"""The worker pool: the stages of one process wired together, started and stopped.

claim → prepare → pace → begin → send → record → settle, each in its module; `Leases` owns
the leases in flight, the one state the stages share. Results flow one way: send tasks
put them on the recorder's queue, the recorder hands what PostgreSQL committed to `Settle`,
which settles the leases (freeing their send slots). An email whose result is not recorded
is never acked, so its lease expires and it is sent again (same Message-ID): delivery is
at-least-once, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..events import Subscription
from ..queue import Waker
from ..tasks import cancel_and_wait
from .begin import Begin
from .claim import Claim, Downstream
from .deps import WorkerDeps
from .hours import RecipientHours
from .leases import Leases
from .pace import Pace
from .prepare import Prepare
from .record import Recorder
from .send import Send
from .settle import Settle
from .share import OwnerShare


class WorkerPool:
    def __init__(self, deps: WorkerDeps) -> None:
        self.deps = deps
        settings = deps.settings
        self._waker = Waker()
        # The process's shared subscription when given (its owner starts it), else our own.
        subscription = deps.subscription
        self._own_subscription: Subscription | None = None
        if subscription is None:
            subscription = self._own_subscription = Subscription(deps.pubsub)
        self._waker.listen_on(subscription)
        self.leases = Leases(deps.queue, settings.worker_concurrency, on_freed=self._waker.set)
        self.settle = Settle(deps, self.leases)
        self.recorder = Recorder(deps.store, self.settle)
        share = OwnerShare(settings.worker_concurrency)
        self.send = Send(deps, self.leases, share, self.recorder.results)
        downstream = Downstream(
            prepare=Prepare(deps.store, self.settle),
            hours=RecipientHours(deps.store, self.leases),
            share=share,
            pace=Pace(deps, self.leases),
            begin=Begin(deps.store, self.leases, deps.queue),
            send=self.send,
        )
        self.claim = Claim(deps, self.leases, self._waker, downstream)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def sent(self) -> int:
        return self.settle.sent

    @property
    def stopping(self) -> bool:
        """True from the start of `stop`: nothing more is claimed."""
        return self.claim.stopping

    async def start(self) -> None:
        if self._own_subscription is not None:
            self._own_subscription.start()
        self._tasks = [
            asyncio.create_task(self.claim.run(), name="dispatch-claim"),
            asyncio.create_task(self.recorder.run(), name="dispatch-record"),
            asyncio.create_task(self.settle.run_progress(), name="dispatch-progress"),
            asyncio.create_task(self.settle.bounces.run(), name="dispatch-bounces"),
            asyncio.create_task(
                self.leases.keep_renewed(self.deps.settings.lease_seconds / 3),
                name="dispatch-renew",
            ),
        ]

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming, let in-flight sends finish within `grace_s`, record them, give back."""
        self.claim.stopping = True
        self._waker.stop()
        await asyncio.wait([self._tasks[0]], timeout=grace_s)  # the claim loop
        await self.send.stop(grace_s)
        self.recorder.stopping = True
        await self.recorder.results.join()
        self.settle.bounces.stopping = True
        await self.settle.bounces.events.join()
        await self.settle.flush_progress()
        await cancel_and_wait(*self._tasks)
        if self._own_subscription is not None:
            await self._own_subscription.stop()
        with contextlib.suppress(Exception):  # sends cut short: hand them to another worker now
            await self.leases.give_back_all()
        await self.deps.transports.close()
