"""The worker pool: claim → pace → ledger → send → record → ack, in batches.

One claim loop leases due ids in batches while send slots are free; each email is sent in
its own task; a recorder writes results in group commits and only then acks them in Redis.
An email whose result is not recorded is never acked, so its lease expires and it is sent
again (same Message-ID): delivery is at-least-once, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from .config import Settings
from .metrics import Metrics
from .models import QUEUED_STATES, CampaignStatus, DispatchJob, DispatchStatus
from .pacing import Pacer, WaitReason, pacing_request
from .plugins import notify
from .prepare import OwnerShare, fail_unprepared, prepare_campaign
from .queue import Lease, RedisQueue, Settlement, Waker
from .recorder import Recorder
from .render import CompiledCampaign, message_id_for
from .sender_health import SenderHealth
from .store import SendOutcome, Store
from .store.senders import WAITING
from .tasks import cancel_and_wait
from .transport import (
    OutgoingMessage,
    PermanentError,
    SenderAuthError,
    SenderRateLimitedError,
    TransientError,
    TransportRegistry,
)

log = logging.getLogger(__name__)

CAMPAIGN_CACHE = 1024


def retry_delay_s(attempt: int, base_ms: int) -> float:
    """Exponential backoff with ±20 % jitter: base, 2 base, 4 base … capped at one hour."""
    delay = min(3600.0, base_ms / 1000 * 2.0 ** max(0, attempt - 1))
    return float(delay * random.uniform(0.8, 1.2))


class WorkerPool:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: RedisQueue,
        redis: Redis,
        transports: TransportRegistry,
        pacer: Pacer,
        hooks: Any,
        metrics: Metrics | None = None,
        pubsub_redis: Redis | None = None,
    ) -> None:
        self.settings = settings
        self.pubsub_redis = pubsub_redis or redis
        self.metrics = metrics or Metrics()
        self.store = store
        self.queue = queue
        self.redis = redis
        self.transports = transports
        self.pacer = pacer
        self.hooks = hooks
        self.concurrency = settings.worker_concurrency
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        self._share = OwnerShare(settings.worker_concurrency)
        self._unprepared: OrderedDict[int, str] = OrderedDict()  # campaign id -> why
        self._inflight: dict[int, Lease] = {}
        self._send_tasks: set[asyncio.Task[None]] = set()
        self.recorder = Recorder(
            settings, store, queue, self.pubsub_redis, hooks, self.metrics, self._settled
        )
        self._campaigns: OrderedDict[int, CompiledCampaign] = OrderedDict()
        self.health = SenderHealth(  # refused logins: sender_health.py
            settings, store, queue, hooks, lambda n: retry_delay_s(n, settings.retry_base_ms)
        )
        self._latency: dict[str, Any] = {}  # transport_latency's child per transport
        self._waker = Waker(self.pubsub_redis)
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle ----

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="dispatch-claim"),
            asyncio.create_task(self.recorder.run(), name="dispatch-record"),
            asyncio.create_task(self.recorder.run_progress(), name="dispatch-progress"),
            asyncio.create_task(self._waker.listen(), name="dispatch-wake"),
            asyncio.create_task(self._renew_loop(), name="dispatch-renew"),
        ]

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming, let in-flight sends finish within `grace_s`, record them, give back."""
        self._stopping = True
        self._waker.stop()
        await asyncio.wait([self._tasks[0]], timeout=grace_s)  # the claim loop
        if self._send_tasks:
            await asyncio.wait(list(self._send_tasks), timeout=grace_s)
        await cancel_and_wait(*self._send_tasks)
        self.recorder.stopping = True
        await self.recorder.results.join()
        await self.recorder.flush_progress()
        await cancel_and_wait(*self._tasks)
        if self._inflight:  # sends cut short: hand them to another worker now
            with contextlib.suppress(Exception):
                await self.queue.release(list(self._inflight.values()))
        await self.transports.close()

    @property
    def sent(self) -> int:
        return self.recorder.sent

    def _settled(self, leases: list[Lease]) -> None:
        for lease in leases:
            self._inflight.pop(lease.dispatch_id, None)
        self._waker.set()  # send slots are free again

    # ---- claiming ----

    async def _claim_loop(self) -> None:
        while not self._stopping:
            free = self.concurrency - len(self._inflight)
            if free < self._share.worth_claiming(self.settings.worker_batch_size):
                await self._waker.wait(1.0)  # woken as soon as sends finish
                continue
            try:
                result = await self.queue.claim(min(self.settings.worker_batch_size, free))
            except Exception:
                log.exception("claim failed; retrying")
                await self._waker.wait(1.0)
                continue
            if not result.leases:
                await self._waker.until_due(result)
                continue
            for lease in result.leases:
                self._inflight[lease.dispatch_id] = lease
            try:
                if not await self._start_batch(result.leases, result.now_ms):
                    # All given back for the fair share: wait for a send of theirs to end.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._share.freed.wait(), 1.0)
            except Exception:
                # Leases stay held and expire; the reaper hands them to another worker.
                log.exception("could not start a batch of %d", len(result.leases))
                for lease in result.leases:
                    self._inflight.pop(lease.dispatch_id, None)
                await self._waker.wait(1.0)

    async def _renew_loop(self) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            if self._inflight:
                try:
                    await self.queue.renew(list(self._inflight.values()))
                except Exception:
                    log.warning("lease renewal failed", exc_info=True)

    # ---- one claimed batch ----

    async def _compiled(
        self, jobs: Iterable[DispatchJob]
    ) -> tuple[dict[int, CompiledCampaign], dict[int, str]]:
        """Compiled campaigns of a batch (recompiled when their sender was edited), and why
        the others cannot be prepared: one campaign's failure is never the batch's."""
        jobs = list(jobs)
        if not jobs:
            return {}, {}
        wanted = {job.campaign_id for job in jobs}
        failed = {cid: self._unprepared[cid] for cid in wanted if cid in self._unprepared}
        senders = await self.store.senders_by_id(list({job.sender_id for job in jobs}))
        missing = [cid for cid in wanted if cid not in self._campaigns and cid not in failed]
        if missing:
            contents = await self.store.campaign_contents(missing)
            for cid in missing:
                content = contents.get(cid)
                prepared = (
                    "the campaign no longer exists"
                    if content is None
                    else await prepare_campaign(content, senders.get(content.sender_id))
                )
                if isinstance(prepared, str):
                    failed[cid] = self._unprepared[cid] = prepared
                    log.warning("campaign %d cannot be sent: %s", cid, prepared)
                else:
                    self._campaigns[cid] = prepared
            while len(self._campaigns) > CAMPAIGN_CACHE:
                self._campaigns.popitem(last=False)
            while len(self._unprepared) > CAMPAIGN_CACHE:
                self._unprepared.popitem(last=False)
        out = {}
        for cid in wanted:
            compiled = self._campaigns.get(cid)
            if compiled is None:
                continue
            fresh = senders.get(compiled.campaign.sender_id)
            if fresh is not None and fresh != compiled.sender:
                prepared = await prepare_campaign(compiled.campaign, fresh)
                if isinstance(prepared, str):
                    failed[cid] = prepared
                    continue
                compiled = self._campaigns[cid] = prepared
            out[cid] = compiled
        return out, failed

    async def _start_batch(self, leases: list[Lease], now_ms: int) -> bool:
        """Start what may go of a claimed batch; False when the fair share held back all."""
        by_id = {lease.dispatch_id: lease for lease in leases}
        jobs = await self.store.load_jobs(list(by_id))
        done: list[Lease] = [by_id[i] for i in set(by_id) - {j.id for j in jobs}]
        runnable: list[DispatchJob] = []
        for job in jobs:
            if job.status in QUEUED_STATES and job.campaign_status in (
                CampaignStatus.SCHEDULED,
                CampaignStatus.RUNNING,
            ):
                runnable.append(job)
            else:  # finished, cancelled or paused: nothing to send, drop from the queue
                done.append(by_id[job.id])
        compiled, failed = await self._compiled(runnable)
        if failed:
            bad = [j for j in runnable if j.campaign_id in failed]
            runnable = [j for j in runnable if j.campaign_id not in failed]
            await fail_unprepared(self.store, self.recorder, bad, failed)
            done += [by_id[j.id] for j in bad]  # acked with the batch's other finished ones
        runnable, held = self._share.admit(runnable)
        if held:  # over their owner's fair share of the send slots: back to the queue
            await self.queue.release([by_id[j.id] for j in held])
            for job in held:
                self._inflight.pop(job.id, None)
        go: list[DispatchJob] = []
        by_sender: dict[int, list[DispatchJob]] = {}
        for job in runnable:
            by_sender.setdefault(job.sender_id, []).append(job)
        for sender_id, group in by_sender.items():
            go.extend(await self._pace(sender_id, group, compiled, by_id, now_ms))
        if go:
            message_ids = [
                message_id_for(j.idempotency_key, compiled[j.campaign_id].sender.from_address)
                for j in go
            ]
            transports = [compiled[j.campaign_id].sender.transport for j in go]
            token = f"{leases[0].token}:{secrets.token_hex(4)}"
            started, already_sent = await self.store.begin_sends(
                [j.id for j in go], message_ids, transports, token
            )
            if already_sent:
                await self.store.repair_sent(list(already_sent))
            done += [by_id[i] for i in already_sent]
            unsent = [by_id[j.id] for j in go if j.id not in started and j.id not in already_sent]
            if unsent:  # cancelled or paused since the claim: their grants go back
                await self.queue.drop(unsent)
                for lease in unsent:
                    self._inflight.pop(lease.dispatch_id, None)
            for job, message_id in zip(go, message_ids, strict=True):
                if job.id in started:
                    await self._slots.acquire()
                    task = asyncio.create_task(
                        self._send(job, compiled[job.campaign_id], message_id, by_id[job.id])
                    )
                    self._share.started(job.owner_id)
                    self._send_tasks.add(task)
                    task.add_done_callback(self._send_tasks.discard)
                    task.add_done_callback(self._share.on_done(job.owner_id))
        if done:
            await self.queue.ack(done)
            for lease in done:
                self._inflight.pop(lease.dispatch_id, None)
        return bool(runnable) or not held

    async def _pace(
        self,
        sender_id: int,
        group: list[DispatchJob],
        compiled: dict[int, CompiledCampaign],
        by_id: dict[int, Lease],
        now_ms: int,
    ) -> list[DispatchJob]:
        """Decide once for the sender's emails; return those that may go now.

        What a campaign cap holds back is queued again for the window it fits in (the
        sender's other campaigns go on); what a sender limit holds back is given back in
        order and the sender is parked.
        """
        outcome = await self.pacer.decide(pacing_request(sender_id, group, compiled, now_ms))
        if outcome.deferred:
            await self.queue.settle(
                [Settlement(by_id[i], "retry", due) for i, due, _ in outcome.deferred]
            )
            waits: dict[tuple[WaitReason, int], list[int]] = {}
            for i, due, why in outcome.deferred:
                self._inflight.pop(i, None)
                waits.setdefault((why, due), []).append(i)
            for (why, due), ids in waits.items():
                await self.store.mark_waiting(ids, why, due)
        if outcome.held:
            await self.queue.release([by_id[i] for i in outcome.held])
            for i in outcome.held:
                self._inflight.pop(i, None)
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
                await notify(
                    self.hooks.sender_limited,
                    sender_id=sender_id,
                    resume_at_ms=resume,
                    reason=outcome.detail,
                    settings=self.settings,
                )
        granted = set(outcome.granted)
        return [job for job in group if job.id in granted]

    # ---- one email ----

    async def _send(
        self, job: DispatchJob, compiled: CompiledCampaign, message_id: str, lease: Lease
    ) -> None:
        attempt = job.attempts + 1
        lag = time.time() - job.scheduled_at.timestamp()
        self.metrics.due_lag.observe(max(0.0, lag))
        self.metrics.in_flight.inc()
        try:
            outcome = await self._deliver(job, compiled, message_id, attempt)
            await self.recorder.results.put((outcome, lease))
        except Exception:
            # Not recorded: stop renewing its lease, so it expires and the reaper re-queues it.
            self._inflight.pop(lease.dispatch_id, None)
            raise
        finally:
            self.metrics.in_flight.dec()
            self._slots.release()

    async def _deliver(
        self, job: DispatchJob, compiled: CompiledCampaign, message_id: str, attempt: int
    ) -> SendOutcome:
        def outcome(status: DispatchStatus, **kw: Any) -> SendOutcome:
            return SendOutcome(
                job.id,
                job.idempotency_key,
                status,
                job.campaign_id,
                job.recipient,
                message_id,
                **kw,
            )

        def waiting(reason: str, wait_s: float) -> SendOutcome:  # keeps its place and attempts
            at = datetime.now(UTC) + timedelta(seconds=wait_s)
            return outcome(
                DispatchStatus.SCHEDULED,
                error=f"{WAITING}{reason}",
                retry_at=at,
                wait_reason=WaitReason.AUTH_FAILURE,
            )

        sender = compiled.sender
        held = self.health.held(sender)
        if held is not None:  # parked, or its login was just refused: do not try it again
            return waiting(held, await self.health.wait(sender, job.id, held))
        try:
            subject, raw = compiled.render(job.recipient, job.vars, message_id)
            transport = await self.transports.for_sender(sender)
            message = OutgoingMessage(
                job.id,
                job.owner_id,
                sender.from_address,
                (job.recipient,),
                message_id,
                subject,
                raw,
            )
            started = time.perf_counter()
            result = await transport.send(message)
            latency = self._latency.get(sender.transport)
            if latency is None:
                latency = self._latency[sender.transport] = self.metrics.transport_latency.labels(
                    sender.transport
                )
            latency.observe(time.perf_counter() - started)
            if sender.login_failures:
                await self.health.worked(sender)
            return outcome(DispatchStatus.SENT, response=result.response)
        except SenderAuthError as exc:  # the account, not this email: the sender waits
            return waiting(str(exc), await self.health.refused(sender, job.id, exc))
        except SenderRateLimitedError as exc:
            wait_s = exc.retry_after_s
            if wait_s is None:
                wait_s = retry_delay_s(attempt, self.settings.retry_base_ms)
            until = time.time() + wait_s
            self.metrics.pacing_parks.labels("provider").inc()
            try:  # parking is best effort: the email itself is rescheduled either way
                await self.queue.defer_sender(sender.id, int(until * 1000))
            except Exception:
                log.warning("could not park sender %d", sender.id, exc_info=True)
            await notify(
                self.hooks.sender_limited,
                sender_id=sender.id,
                resume_at_ms=int(until * 1000),
                reason=str(exc),
                settings=self.settings,
            )
            at = datetime.fromtimestamp(until, UTC)
            return outcome(DispatchStatus.SCHEDULED, error=str(exc), retry_at=at)
        except TransientError as exc:
            if attempt >= self.settings.max_attempts:
                reason = f"gave up after {attempt} attempts: {exc}"
                return outcome(DispatchStatus.FAILED, error=reason)
            at = datetime.now(UTC) + timedelta(
                seconds=retry_delay_s(attempt, self.settings.retry_base_ms)
            )
            return outcome(DispatchStatus.SCHEDULED, error=str(exc), retry_at=at)
        except PermanentError as exc:
            return outcome(DispatchStatus.FAILED, error=str(exc))
        except Exception as exc:  # a template or plugin bug: fail this email, keep the worker
            log.exception("sending dispatch %d failed unexpectedly", job.id)
            return outcome(DispatchStatus.FAILED, error=f"{type(exc).__name__}: {exc}")

    # ---- recording ----
