"""Last stage: settle recorded results in Redis and tell the world.

The leases of recorded results are acked, or retried at their new due time, in one script
call (through `Leases`, which then frees their send slots). Then metrics and logs count
them, dashboards hear of them on EVENTS_CHANNEL, and the `dispatch_sent` /
`dispatch_failed` hooks fire; refusals that are bounces go on to `SyncBounces` (bounces.py).
Campaign progress is folded in at most twice a second, so big campaigns do not pay a
progress query per batch; `campaign_completed` fires from there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .. import events
from ..consent.feedback import Feedback
from ..consent.settings import ConsentSettings
from ..models import CampaignStatus, DispatchStatus
from ..queue import Lease, Settlement
from ..setting import settings_of
from ..store import SendOutcome
from .bounces import SyncBounces
from .deps import WorkerDeps
from .leases import Leases

log = logging.getLogger("dispatch_engine.worker")

PROGRESS_EVERY_S = 0.5


class Settle:
    def __init__(self, deps: WorkerDeps, leases: Leases) -> None:
        self.settings = deps.settings
        self.store = deps.store
        self.pubsub_redis = deps.pubsub
        self.hooks = deps.hooks
        self.metrics = deps.metrics
        self.leases = leases
        self.sent = 0
        self._touched: set[int] = set()  # campaigns whose progress may have changed
        consent = settings_of(ConsentSettings, deps.settings)
        feedback = deps.feedback or Feedback(deps.store, consent)
        self.bounces = SyncBounces(feedback)  # its task runs beside the recorder's

    async def recorded(self, batch: list[tuple[SendOutcome, Lease]]) -> None:
        """Results PostgreSQL has committed: settle their leases, count and announce them."""
        settlements = [
            Settlement(lease, "retry", int(o.retry_at.timestamp() * 1000))
            if o.status == DispatchStatus.SCHEDULED and o.retry_at is not None
            else Settlement(lease, "ack")
            for o, lease in batch
        ]
        try:
            refused = await self.leases.settle(settlements)
            if refused:
                log.warning("%d leases had expired before their ack", len(refused))
        except Exception:
            log.warning("ack failed; the leases will expire and be re-checked", exc_info=True)
        outcomes = [o for o, _ in batch]
        self._count(outcomes)
        await self._announce(outcomes)
        self.bounces.recorded(outcomes)  # committed: now they may suppress and pause

    async def announce_failed(self, outcomes: list[SendOutcome]) -> None:
        """Failures recorded outside the group commit (a campaign that cannot be prepared)."""
        self._count(outcomes)
        await self._announce(outcomes)

    async def run_progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            await self.flush_progress()

    async def flush_progress(self) -> None:
        """Fold results into campaign statuses; announce the changes, fire `campaign_completed`."""
        if not self._touched:
            return
        touched, self._touched = self._touched, set()
        try:
            changed = await self.store.update_campaign_progress(list(touched))
        except Exception:
            self._touched |= touched  # try again next time
            log.warning("progress update failed", exc_info=True)
            return
        for campaign_id, owner_id, status in changed:
            # Pages showing the campaign refresh on this, not only on the dispatches before it.
            await self._publish({"type": "campaign", "id": campaign_id, "owner_id": owner_id})
            if status == CampaignStatus.COMPLETED:
                await self.hooks.campaign_completed(campaign_id=campaign_id, owner_id=owner_id)

    def _count(self, outcomes: list[SendOutcome]) -> None:
        sent = 0
        for o in outcomes:
            if o.status == DispatchStatus.SENT:
                sent += 1
                self._touched.add(o.campaign_id)
                continue
            ids = {"dispatch_id": o.dispatch_id, "campaign_id": o.campaign_id}
            if o.status == DispatchStatus.SCHEDULED:
                self.metrics.retries.inc()
                log.info("dispatch %d will retry: %s", o.dispatch_id, o.error, extra=ids)
                continue
            self.metrics.emails.labels(o.status.value).inc()
            self._touched.add(o.campaign_id)
            log.warning("dispatch %d %s: %s", o.dispatch_id, o.status.value, o.error, extra=ids)
        if sent:
            self.sent += sent
            self.metrics.emails.labels(DispatchStatus.SENT.value).inc(sent)

    async def _announce(self, outcomes: list[SendOutcome]) -> None:
        finished = [o for o in outcomes if o.status != DispatchStatus.SCHEDULED]
        if not finished:
            return
        await self._publish({"type": "dispatches", "ids": [o.dispatch_id for o in finished][:1000]})
        sent_hooks, failed_hooks = self.hooks.has_dispatch_sent, self.hooks.has_dispatch_failed
        for o in finished:
            if o.status == DispatchStatus.SENT and sent_hooks:
                await self.hooks.dispatch_sent(
                    dispatch_id=o.dispatch_id,
                    campaign_id=o.campaign_id,
                    recipient=o.recipient,
                    message_id=o.message_id,
                )
            elif o.status == DispatchStatus.FAILED and failed_hooks:
                await self.hooks.dispatch_failed(
                    dispatch_id=o.dispatch_id,
                    campaign_id=o.campaign_id,
                    recipient=o.recipient,
                    error=o.error or "",
                )

    async def _publish(self, event: dict[str, Any]) -> None:
        await events.publish(self.pubsub_redis, event)
