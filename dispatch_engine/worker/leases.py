"""The leases one worker process holds: the only owner of that state.

Invariants (tests/test_leases.py checks each):
- a lease is in flight from `claimed` until it leaves exactly once: `settle` (Redis is told:
  ack, retry, drop or release) or `abandon` (left to expire; the reaper hands it on);
- a lease is its dispatch id *and* its fencing token: settling one that is not in flight
  (settled already, abandoned, or replaced by a newer claim of the same id) changes nothing
  here and is counted in `unknown`; Redis refuses its stale token too;
- `renew` renews exactly the leases in flight, nothing settled;
- `give_back_all` (at stop) releases every lease still in flight: none remains after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from ..queue import Lease, RedisQueue, Settlement

log = logging.getLogger("dispatch_engine.worker")


class Leases:
    def __init__(
        self, queue: RedisQueue, capacity: int, on_freed: Callable[[], None] = lambda: None
    ) -> None:
        self.queue = queue
        self.capacity = capacity
        self.on_freed = on_freed  # the claim loop's wake-up: send slots are free again
        self.unknown = 0  # settlements of leases not in flight (a bug or a stale duplicate)
        self.replaced = 0  # ids claimed again while an older lease of theirs was in flight
        self._in_flight: dict[int, Lease] = {}

    def __len__(self) -> int:
        return len(self._in_flight)

    def __contains__(self, lease: Lease) -> bool:
        return self._in_flight.get(lease.dispatch_id) == lease

    @property
    def free(self) -> int:
        return self.capacity - len(self._in_flight)

    def in_flight(self) -> list[Lease]:
        return list(self._in_flight.values())

    def claimed(self, leases: Iterable[Lease]) -> None:
        """Leases just claimed are in flight. An id already held under an older token had its
        lease expire and be reaped: the older one is dead in Redis, the new one counts."""
        for lease in leases:
            older = self._in_flight.get(lease.dispatch_id)
            if older is not None and older != lease:
                self.replaced += 1
            self._in_flight[lease.dispatch_id] = lease

    async def settle(self, settlements: Sequence[Settlement]) -> list[int]:
        """Tell Redis, then let the leases go (also when Redis fails: then they expire and
        the reaper re-queues them). Returns the ids Redis refused as stale."""
        if not settlements:
            return []
        try:
            return await self.queue.settle(settlements)
        finally:
            self._leave([s.lease for s in settlements], count_unknown=True)

    async def ack(self, leases: Sequence[Lease]) -> list[int]:
        return await self.settle([Settlement(lease, "ack") for lease in leases])

    async def drop(self, leases: Sequence[Lease]) -> list[int]:
        """Granted but not sent (cancelled or paused since the claim): grants go back."""
        return await self.settle([Settlement(lease, "drop") for lease in leases])

    async def release(self, leases: Sequence[Lease]) -> list[int]:
        """Back to the queue unchanged, for another claim."""
        return await self.settle([Settlement(lease, "release") for lease in leases])

    def abandon(self, leases: Iterable[Lease]) -> None:
        """Stop renewing those still in flight: their leases expire and the reaper re-queues
        them (a send that was not recorded, a batch that could not start)."""
        self._leave(leases, count_unknown=False)

    async def renew(self) -> list[int]:
        """Push back the expiry of every lease in flight; returns ids Redis no longer holds."""
        leases = self.in_flight()
        return await self.queue.renew(leases) if leases else []

    async def keep_renewed(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.renew()
            except Exception:
                log.warning("lease renewal failed", exc_info=True)

    async def give_back_all(self) -> None:
        """At stop: release every lease still in flight (sends cut short) for another worker."""
        await self.release(self.in_flight())

    def _leave(self, leases: Iterable[Lease], *, count_unknown: bool) -> None:
        freed = False
        for lease in leases:
            if self._in_flight.get(lease.dispatch_id) == lease:
                del self._in_flight[lease.dispatch_id]
                freed = True
            elif count_unknown:
                self.unknown += 1
        if freed:
            self.on_freed()
