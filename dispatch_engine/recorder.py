"""Group commit of send results: record in PostgreSQL first, then settle the leases in Redis.

A result is never acknowledged before it is recorded: if PostgreSQL is away the recorder
keeps it and retries, and if this process dies the lease expires and the email is checked
again (the ledger says whether it went). Campaign progress is folded in at most twice a
second, so big campaigns do not pay a progress query per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis

from .config import Settings
from .metrics import Metrics
from .models import CampaignStatus, DispatchStatus
from .plugins import notify
from .queue import Lease, RedisQueue, Settlement
from .store import SendOutcome, Store

log = logging.getLogger("dispatch_engine.worker")

RECORD_BATCH = 500
GATHER_S = 0.002  # a short wait lets a small batch grow: fewer commits, same send speed
PROGRESS_EVERY_S = 0.5
EVENTS_CHANNEL = "dispatch:events"  # live updates for dashboards, in any process


class Recorder:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: RedisQueue,
        pubsub_redis: Redis,
        hooks: Any,
        metrics: Metrics,
        on_settled: Callable[[list[Lease]], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.pubsub_redis = pubsub_redis
        self.hooks = hooks
        self.metrics = metrics
        self.on_settled = on_settled
        self.results: asyncio.Queue[tuple[SendOutcome, Lease]] = asyncio.Queue()
        self.stopping = False
        self.sent = 0
        self._touched: set[int] = set()  # campaigns whose progress may have changed

    async def run(self) -> None:
        while True:
            batch = [await self.results.get()]
            if self.results.qsize() < RECORD_BATCH // 10:
                await asyncio.sleep(GATHER_S)
            while len(batch) < RECORD_BATCH and not self.results.empty():
                batch.append(self.results.get_nowait())
            try:
                await self._record(batch)
            finally:
                for _ in batch:
                    self.results.task_done()

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
                await notify(
                    self.hooks.campaign_completed,
                    campaign_id=campaign_id,
                    owner_id=owner_id,
                    settings=self.settings,
                )

    async def announce_failed(self, outcomes: list[SendOutcome]) -> None:
        """Failures recorded outside the group commit (a campaign that cannot be prepared)."""
        self._count(outcomes)
        await self._announce(outcomes)

    async def _record(self, batch: list[tuple[SendOutcome, Lease]]) -> None:
        outcomes = [o for o, _ in batch]
        delay = 0.1
        while True:
            try:
                await self.store.record_outcomes(outcomes)
                break
            except Exception:  # PostgreSQL away: keep the results, never ack unrecorded sends
                if self.stopping and delay > 5:
                    log.error("could not record %d results before stopping", len(batch))
                    return
                log.warning("recording %d results failed; retrying", len(batch), exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        settlements = [
            Settlement(lease, "retry", int(o.retry_at.timestamp() * 1000))
            if o.status == DispatchStatus.SCHEDULED and o.retry_at is not None
            else Settlement(lease, "ack")
            for o, lease in batch
        ]
        try:
            refused = await self.queue.settle(settlements)
            if refused:
                log.warning("%d leases had expired before their ack", len(refused))
        except Exception:
            log.warning("ack failed; the leases will expire and be re-checked", exc_info=True)
        self.on_settled([lease for _, lease in batch])
        self._count(outcomes)
        await self._announce(outcomes)

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
            log.warning("dispatch %d failed: %s", o.dispatch_id, o.error, extra=ids)
        if sent:
            self.sent += sent
            self.metrics.emails.labels(DispatchStatus.SENT.value).inc(sent)

    async def _announce(self, outcomes: list[SendOutcome]) -> None:
        finished = [o for o in outcomes if o.status != DispatchStatus.SCHEDULED]
        if not finished:
            return
        await self._publish({"type": "dispatches", "ids": [o.dispatch_id for o in finished][:1000]})
        sent_hooks = self.hooks.dispatch_sent.get_hookimpls()
        failed_hooks = self.hooks.dispatch_failed.get_hookimpls()
        for o in finished:
            if o.status == DispatchStatus.SENT and sent_hooks:
                await notify(
                    self.hooks.dispatch_sent,
                    dispatch_id=o.dispatch_id,
                    campaign_id=o.campaign_id,
                    recipient=o.recipient,
                    message_id=o.message_id,
                    settings=self.settings,
                )
            elif o.status == DispatchStatus.FAILED and failed_hooks:
                await notify(
                    self.hooks.dispatch_failed,
                    dispatch_id=o.dispatch_id,
                    campaign_id=o.campaign_id,
                    recipient=o.recipient,
                    error=o.error or "",
                    settings=self.settings,
                )

    async def _publish(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # live pages are a convenience
            await self.pubsub_redis.publish(EVENTS_CHANNEL, orjson.dumps(event))
