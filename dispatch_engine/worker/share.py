"""Send slots per owner: no owner holds more than a fair share of the process's send slots
while other owners have emails waiting (a slow SMTP server of one owner cannot starve
another)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence

from ..models import DispatchJob

SHARE_WINDOW_S = 2.0  # seen in a claimed batch this recently: active (short: slots stay used)


class OwnerShare:
    """Send slots per owner: at most max(1, slots // active owners) in flight each.

    An owner is active while it has sends in flight or was seen in a claimed batch within
    SHARE_WINDOW_S. Alone, an owner may use every slot; once another owner shows up, what
    goes over the share is given back to the queue, and the slots it frees go to the others.
    """

    def __init__(self, slots: int, window_s: float = SHARE_WINDOW_S) -> None:
        self.slots = slots
        self.window_s = window_s
        self.in_flight: Counter[int] = Counter()
        self._seen: dict[int, float] = {}
        self.freed = asyncio.Event()  # set when a send of an owner ends

    def cap(self) -> int:
        return max(1, self.slots // max(1, len(self._seen)))

    def worth_claiming(self, batch_size: int) -> int:
        """Free slots worth a claim: half a batch alone (fewer, bigger claims), but no more
        than half an owner's share once several are active (their share must be claimable)."""
        batch = min(batch_size, self.slots) // 2 + 1
        owners = len(self._seen)
        return batch if owners < 2 else max(1, min(batch, self.slots // (2 * owners)))

    def admit(self, jobs: Sequence[DispatchJob]) -> tuple[list[DispatchJob], list[DispatchJob]]:
        """Split a batch into (may start now, give back): the batch's order is kept."""
        now = time.monotonic()
        for job in jobs:
            self._seen[job.owner_id] = now
        for owner, at in list(self._seen.items()):
            if now - at > self.window_s and not self.in_flight[owner]:
                del self._seen[owner]
        cap = self.cap()
        planned: Counter[int] = Counter()
        go: list[DispatchJob] = []
        held: list[DispatchJob] = []
        for job in jobs:
            if self.in_flight[job.owner_id] + planned[job.owner_id] < cap:
                planned[job.owner_id] += 1
                go.append(job)
            else:
                held.append(job)
        if held:
            self.freed.clear()
        return go, held

    def started(self, owner_id: int) -> None:
        self.in_flight[owner_id] += 1
        self._seen[owner_id] = time.monotonic()

    def on_done(self, owner_id: int) -> Callable[[asyncio.Task[None]], None]:
        """A send task's done callback: its slot goes back to the share."""
        return lambda _task: self.finished(owner_id)

    def finished(self, owner_id: int) -> None:
        self.in_flight[owner_id] -= 1
        if self.in_flight[owner_id] <= 0:
            del self.in_flight[owner_id]
        self.freed.set()
