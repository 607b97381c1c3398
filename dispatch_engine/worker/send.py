"""Stage 5: each started email is rendered and handed to its sender's transport, in its own
task, within WORKER_CONCURRENCY send slots.

The outcome (sent, retry at, failed) goes one way onto the recorder's queue with its lease.
A send that raises is not recorded: its lease is abandoned, so it expires and the reaper
re-queues it (the ledger then says whether it went).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ..consent.feedback import FeedbackKind
from ..consent.smtp_status import bounce_of
from ..consent.unsubscribe import UnsubscribeLinks
from ..consent.verp import ReturnPaths
from ..dkim import DkimSigner
from ..models import DispatchJob, DispatchStatus
from ..pacing import WaitReason
from ..queue import Lease
from ..render import CompiledCampaign
from ..sequences.compiled import render_email
from ..store import SendOutcome
from ..store.senders import WAITING
from ..tasks import cancel_and_wait
from ..transport import (
    OutgoingMessage,
    PermanentError,
    PermanentReply,
    SenderAuthError,
    SenderRateLimitedError,
    TransientError,
)
from .deps import WorkerDeps
from .leases import Leases
from .pace import sender_limited
from .sender_health import SenderHealth
from .share import OwnerShare

log = logging.getLogger("dispatch_engine.worker")


def retry_delay_s(attempt: int, base_ms: int) -> float:
    """Exponential backoff with ±20 % jitter: base, 2 base, 4 base … capped at one hour."""
    delay = min(3600.0, base_ms / 1000 * 2.0 ** max(0, attempt - 1))
    return float(delay * random.uniform(0.8, 1.2))


class Send:
    def __init__(
        self,
        deps: WorkerDeps,
        leases: Leases,
        share: OwnerShare,
        results: asyncio.Queue[tuple[SendOutcome, Lease]],
    ) -> None:
        self.settings = deps.settings
        self.queue = deps.queue
        self.transports = deps.transports
        self.hooks = deps.hooks
        self.metrics = deps.metrics
        self.leases = leases
        self.share = share
        self.results = results
        self.health = SenderHealth(  # refused logins: sender_health.py
            deps.settings,
            deps.store,
            deps.queue,
            deps.hooks,
            lambda n: retry_delay_s(n, deps.settings.retry_base_ms),
        )
        self.unsubscribe = UnsubscribeLinks(deps.settings)  # each email's one-click link
        self._slots = asyncio.Semaphore(deps.settings.worker_concurrency)
        self.return_paths = ReturnPaths.of(deps.settings)  # VERP: bounce+<token>@…
        self._tasks: set[asyncio.Task[None]] = set()
        self._latency: dict[str, Any] = {}  # transport_latency's child per transport
        self.dkim = DkimSigner(deps.transports.box)  # signs before any transport (docs/senders.md)

    async def start(
        self, job: DispatchJob, compiled: CompiledCampaign, message_id: str, lease: Lease
    ) -> None:
        """Start one email's send once a slot is free."""
        await self._slots.acquire()
        task = asyncio.create_task(self._send(job, compiled, message_id, lease))
        self.share.started(job.owner_id)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self.share.on_done(job.owner_id))

    async def stop(self, grace_s: float) -> None:
        """Let sends in flight finish within `grace_s`; cut the others short."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        await cancel_and_wait(*self._tasks)

    async def _send(
        self, job: DispatchJob, compiled: CompiledCampaign, message_id: str, lease: Lease
    ) -> None:
        attempt = job.attempts + 1
        lag = time.time() - job.scheduled_at.timestamp()
        self.metrics.due_lag.observe(max(0.0, lag))
        self.metrics.in_flight.inc()
        try:
            outcome = await self._deliver(job, compiled, message_id, attempt)
            await self.results.put((outcome, lease))
        except Exception:
            # Not recorded: stop renewing its lease, so it expires and the reaper re-queues it.
            self.leases.abandon([lease])
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
            unsubscribe = self.unsubscribe.for_dispatch(job.id)
            subject, raw = render_email(compiled, job, message_id, unsubscribe)  # any step
            raw = self.dkim.sign(sender, raw)
            transport = await self.transports.for_sender(sender)
            message = OutgoingMessage(
                job.id,
                job.owner_id,
                self.return_paths.for_dispatch(job.id, sender.from_address),
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
            await sender_limited(self.hooks, sender.id, int(until * 1000), str(exc))
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
        except PermanentReply as exc:  # a hard bounce ends `bounced`; feedback follows the commit
            kind = bounce_of(exc)
            hard = kind == FeedbackKind.HARD_BOUNCE
            status = DispatchStatus.BOUNCED if hard else DispatchStatus.FAILED
            return outcome(status, error=str(exc), bounce=kind and kind.value)
        except PermanentError as exc:
            return outcome(DispatchStatus.FAILED, error=str(exc))
        except Exception as exc:  # a template or plugin bug: fail this email, keep the worker
            log.exception("sending dispatch %d failed unexpectedly", job.id)
            return outcome(DispatchStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
