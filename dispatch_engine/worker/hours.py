"""Stage 2b: a campaign's sending window, in each recipient's own time zone.

An email claimed outside its recipient's window (after downtime, or a start at night in
that zone) is not paced nor sent: it goes back to the queue for the window's next opening,
shown as `rate_limited` / `recipient_hours`. So the window holds whenever an email is sent,
and an email late by a day waits for the next window instead of arriving at 3 a.m.
Nothing is charged against a rate window for it.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from ..models import DispatchJob
from ..pacing import WaitReason
from ..queue import Lease, Settlement
from ..recipient_hours import recipient_zone
from ..render import CompiledCampaign
from ..store import Store
from .leases import Leases


def opening_for(job: DispatchJob, compiled: CompiledCampaign, now: datetime) -> datetime:
    """`now` if the job's recipient is inside its campaign's window, else the next opening."""
    window = compiled.campaign.send_window
    if window is None:
        return now
    return window.in_zone(recipient_zone(job.vars, window.zone)).next_opening(now)


class RecipientHours:
    def __init__(self, store: Store, leases: Leases) -> None:
        self.store = store
        self.leases = leases

    async def batch(
        self,
        jobs: list[DispatchJob],
        compiled: dict[int, CompiledCampaign],
        by_id: dict[int, Lease],
        now_ms: int,
    ) -> list[DispatchJob]:
        """The jobs inside their window now; the others are re-queued for their opening."""
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        go: list[DispatchJob] = []
        held: dict[int, list[int]] = defaultdict(list)  # opening (ms) -> dispatch ids
        for job in jobs:
            opening = opening_for(job, compiled[job.campaign_id], now)
            if opening <= now:
                go.append(job)
            else:
                held[int(opening.timestamp() * 1000)].append(job.id)
        for until_ms, ids in held.items():
            await self.store.mark_waiting(ids, WaitReason.RECIPIENT_HOURS, until_ms)
            await self.leases.settle([Settlement(by_id[i], "retry", until_ms) for i in ids])
        return go
