"""Account health: a sender whose server keeps refusing its login is parked, not retried.

A wrong password would otherwise cost one failed login per email (a 10,000-email campaign:
10,000 refusals, and a locked mailbox). Refused logins (`SenderAuthError`) are counted in
PostgreSQL across worker processes; between two of them the sender is deferred with backoff,
and at `LOGIN_FAILURES_TO_PARK` it is parked: `senders.parked_reason` is set, the queue
holds the sender indefinitely, and `sender_parked` fires once. Its emails wait with their
attempts intact until its settings change or a user resumes it (`senders.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..config import Settings
from ..hooks import Hooks
from ..models import Sender
from ..queue import RedisQueue
from ..store import Store
from ..transport import SenderAuthError

log = logging.getLogger(__name__)

LOGIN_FAILURES_TO_PARK = 3
# A parked sender is deferred this far ahead; unparking ends it at once.
PARKED_FOR_MS = 10 * 365 * 86_400_000


class SenderHealth:
    """What one worker process knows and does about its senders' logins."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: RedisQueue,
        hooks: Hooks,
        backoff_s: Callable[[int], float],
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.hooks = hooks
        self.backoff_s = backoff_s
        self._held_until: dict[int, float] = {}  # sender id -> monotonic time; no login before
        self._reset: dict[int, Sender] = {}

    def held(self, sender: Sender) -> str | None:
        """Why this sender's emails must not try its account now, or None."""
        if sender.parked_reason is not None:
            return sender.parked_reason
        if time.monotonic() < self._held_until.get(sender.id, 0.0):
            return "its login was just refused; trying again shortly"
        return None

    async def wait(self, sender: Sender, dispatch_id: int, reason: str) -> float:
        """An email of a held sender: keep it queued (park again in Redis, which may have lost
        the parking); returns in how many seconds it is due again."""
        await self.store.refund_attempt(dispatch_id)
        if sender.parked_reason is not None:
            await self._park_in_queue(sender.id)
            return 0.0  # due now; the parked sender is not claimed until it is fixed
        return max(0.0, self._held_until.get(sender.id, 0.0) - time.monotonic())

    async def refused(self, sender: Sender, dispatch_id: int, exc: SenderAuthError) -> float:
        """The server refused the sender's login: count it, defer or park the sender.

        Returns in how many seconds the email is due again (the sender's deferral holds it).
        """
        await self.store.refund_attempt(dispatch_id)
        reason = str(exc)
        failures = max(1, sender.login_failures)
        if exc.attempted:
            counted = await self.store.count_login_failure(
                sender.id, sender.transport_settings, reason, LOGIN_FAILURES_TO_PARK
            )
            if counted is None:  # parked already, or a refusal of settings changed since
                if await self.store.parked_reason(sender.id) is not None:
                    await self._park_in_queue(sender.id)
                return 0.0
            failures, parked = counted
            if parked:
                log.warning("sender %d parked: %s", sender.id, reason)
                await self._park_in_queue(sender.id)
                await self.store.mark_sender_waiting(sender.id, reason)
                await self.hooks.sender_parked(sender_id=sender.id, reason=reason)
                return 0.0
        wait_s = self.backoff_s(failures)
        self._held_until[sender.id] = max(
            self._held_until.get(sender.id, 0.0), time.monotonic() + wait_s
        )
        try:
            await self.queue.defer_sender(sender.id, int((time.time() + wait_s) * 1000))
        except Exception:
            log.warning("could not defer sender %d", sender.id, exc_info=True)
        return wait_s

    async def worked(self, sender: Sender) -> None:
        """A send went through: earlier refusals of this account were not lasting."""
        if sender.login_failures and self._reset.get(sender.id) is not sender:
            self._reset[sender.id] = sender  # once per snapshot of the sender
            self._held_until.pop(sender.id, None)
            await self.store.reset_login_failures(sender.id)

    async def _park_in_queue(self, sender_id: int) -> None:
        try:
            until = int(time.time() * 1000) + PARKED_FOR_MS
            await self.queue.defer_sender(sender_id, until)
        except Exception:  # PostgreSQL says parked: the next claim of it parks it again
            log.warning("could not park sender %d in the queue", sender_id, exc_info=True)
