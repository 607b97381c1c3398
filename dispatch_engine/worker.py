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
from .pacing import Pacer, PacingRequest
from .plugins import notify
from .queue import Lease, RedisQueue, Waker
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
            if free < min(self.settings.worker_batch_size, self.concurrency) // 2 + 1:
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
                await self._start_batch(result.leases, result.now_ms)
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

    async def _compiled(self, jobs: Iterable[DispatchJob]) -> dict[int, CompiledCampaign]:
        """Compiled campaigns of a batch; recompiled when their sender was edited."""
        jobs = list(jobs)
        if not jobs:
            return {}
        wanted = {job.campaign_id for job in jobs}
        senders = await self.store.senders_by_id(list({job.sender_id for job in jobs}))
        missing = [cid for cid in wanted if cid not in self._campaigns]
        if missing:
            for cid, content in (await self.store.campaign_contents(missing)).items():
                self._campaigns[cid] = CompiledCampaign(content, senders[content.sender_id])
            while len(self._campaigns) > CAMPAIGN_CACHE:
                self._campaigns.popitem(last=False)
        out = {}
        for cid in wanted:
            compiled = self._campaigns.get(cid)
            if compiled is None:
                continue
            fresh = senders.get(compiled.campaign.sender_id)
            if fresh is not None and fresh != compiled.sender:
                compiled = self._campaigns[cid] = CompiledCampaign(compiled.campaign, fresh)
            out[cid] = compiled
        return out

    async def _start_batch(self, leases: list[Lease], now_ms: int) -> None:
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
        compiled = await self._compiled(runnable)
        go: list[DispatchJob] = []
        by_sender: dict[int, list[DispatchJob]] = {}
        for job in runnable:
            by_sender.setdefault(job.sender_id, []).append(job)
        for sender_id, group in by_sender.items():
            allowed = await self._pace(sender_id, group, compiled, by_id, now_ms)
            go.extend(group[:allowed])
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
            done += [by_id[j.id] for j in go if j.id not in started and j.id not in already_sent]
            for job, message_id in zip(go, message_ids, strict=True):
                if job.id in started:
                    await self._slots.acquire()
                    task = asyncio.create_task(
                        self._send(job, compiled[job.campaign_id], message_id, by_id[job.id])
                    )
                    self._send_tasks.add(task)
                    task.add_done_callback(self._send_tasks.discard)
        if done:
            await self.queue.ack(done)
            for lease in done:
                self._inflight.pop(lease.dispatch_id, None)

    async def _pace(
        self,
        sender_id: int,
        group: list[DispatchJob],
        compiled: dict[int, CompiledCampaign],
        by_id: dict[int, Lease],
        now_ms: int,
    ) -> int:
        """Ask the pacing policies; park the sender and give back what may not go now."""
        campaigns = [compiled[j.campaign_id].campaign for j in group]
        sender = compiled[group[0].campaign_id].sender
        limit = min([sender.hourly_limit] + [c.hourly_limit for c in campaigns if c.hourly_limit])
        gap = max([sender.min_gap_ms] + [c.delay_between_ms for c in campaigns])
        decision = await self.pacer.acquire(
            PacingRequest(sender_id, limit, gap, len(group), now_ms)
        )
        if decision.allowed >= len(group):
            return len(group)
        held = group[decision.allowed :]
        await self.queue.release([by_id[j.id] for j in held])
        for job in held:
            self._inflight.pop(job.id, None)
        if decision.resume_at_ms is not None:
            # A little jitter spreads the restart of many parked senders; a tenth of the wait
            # at most, so a 50 ms gap stays about 50 ms.
            wait_ms = max(0, decision.resume_at_ms - now_ms)
            resume = decision.resume_at_ms + random.randint(0, min(250, wait_ms // 10))
            await self.queue.defer_sender(sender_id, resume)
            self.metrics.pacing_parks.labels("pacing").inc()
            if decision.limited:
                await self.store.mark_rate_limited([j.id for j in held])
                await notify(
                    self.hooks.sender_limited,
                    sender_id=sender_id,
                    resume_at_ms=resume,
                    reason=decision.reason,
                    settings=self.settings,
                )
        return decision.allowed

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
            return outcome(DispatchStatus.SCHEDULED, error=f"{WAITING}{reason}", retry_at=at)

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
