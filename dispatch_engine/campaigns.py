"""Turn a schedule request into a campaign row, dispatch rows (COPY) and queue entries."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from . import senders
from .config import Settings
from .errors import InvalidState, NotFound, ValidationError
from .hooks import Hooks
from .message_ids import idempotency_key
from .models import CampaignStatus, Sender, User
from .parsing import aware_datetime, whole_number
from .pools.request import enqueue_all, parse_senders, pool_for, sender_ref
from .queue import RedisQueue
from .recipient_hours import SendWindow, parse_send_window, reject_unknown_zones
from .recipients import Limits, ParsedRecipients, from_request
from .render import TemplateProblem, check_templates, one_line, render_preview
from .requeue import requeue
from .sequences.steps import StepRequest, check_steps, parse_steps
from .store import NewDispatch, Store
from .suppressions import leave_out_suppressed

MAX_SUBJECT = 998
MAX_NAME = 200
MAX_BODY = 1_000_000


@dataclass(frozen=True)
class ScheduleRequest:
    subject: str
    body: str
    html: str | None
    recipients: ParsedRecipients
    start_at: datetime
    delay_between_ms: int
    hourly_limit: int | None
    sender: str | int | None
    daily_limit: int | None = None
    delay_jitter_ms: int = 0  # a random extra delay in [0, delay_jitter_ms] per email
    name: str | None = None  # shown in the lists; the subject stands in when there is none
    send_window: SendWindow | None = None  # in each recipient's own time zone
    senders: tuple[str | int, ...] = ()  # a pool instead of `sender` (pools/, docs/pools.md)
    steps: tuple[StepRequest, ...] = ()  # follow-ups (sequences/steps.py)


@dataclass(frozen=True)
class ScheduleResult:
    campaign_id: int
    accepted: int
    rejected: list[dict[str, Any]]
    rejected_total: int = 0
    replayed: bool = False
    suppressed: int = 0  # of rejected_total: suppressed addresses left out


def _text(data: dict[str, Any], name: str, *, required: bool, limit: int) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise ValidationError(name, "is required")
        return None
    if not isinstance(value, str):
        raise ValidationError(name, "must be a string")
    if len(value) > limit:
        raise ValidationError(name, f"must be at most {limit} characters")
    return value


def _int(data: dict[str, Any], name: str, *, minimum: int, maximum: int) -> int | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    return whole_number(value, name, minimum=minimum, maximum=maximum)


def _start_at(value: Any, now: datetime) -> datetime:
    if value is None or value == "":
        return now
    at = aware_datetime(value, "start_at")
    if at.year >= 9999:  # leaves a year for date arithmetic (delays, retries, windows)
        raise ValidationError("start_at", "must be before the year 9999")
    return at


def _campaign_name(value: Any) -> str | None:
    """An optional name of one line, at most MAX_NAME characters (blank: none)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise ValidationError("name", f"must be text of at most {MAX_NAME} characters")
    if one_line(value) != value:
        raise ValidationError("name", "must be a single line")
    return value.strip()


def parse_schedule_request(
    data: dict[str, Any], *, now: datetime, limits: Limits | None = None
) -> ScheduleRequest:
    """Validate the fields of POST /api/emails/schedule (already decoded from JSON/multipart).

    Plain CPU work (a million recipients take seconds): the web layer runs it off the loop.
    """
    subject = _text(data, "subject", required=True, limit=MAX_SUBJECT)
    body = _text(data, "body", required=True, limit=MAX_BODY)
    assert subject is not None and body is not None
    if "\n" in subject or "\r" in subject:
        raise ValidationError("subject", "must be a single line")
    html = _text(data, "html", required=False, limit=MAX_BODY)
    start_at = _start_at(data.get("start_at"), now)
    delay = _int(data, "delay_between_ms", minimum=0, maximum=86_400_000) or 0
    hourly_limit = _int(data, "hourly_limit", minimum=1, maximum=1_000_000_000)
    daily_limit = _int(data, "daily_limit", minimum=1, maximum=1_000_000_000)
    jitter = _int(data, "delay_jitter_ms", minimum=0, maximum=86_400_000) or 0
    sender = sender_ref(data.get("sender"))
    pool = parse_senders(data.get("senders"), sender)
    name = _campaign_name(data.get("name"))
    send_window = parse_send_window(data)
    recipients = from_request(data, limits)
    if send_window is not None:
        reject_unknown_zones(recipients)
    recipients.require_some()
    try:  # the last email must still be a date PostgreSQL and Python can hold
        last = start_at + timedelta(milliseconds=delay + jitter) * len(recipients.accepted)
    except OverflowError:
        last = datetime.max.replace(tzinfo=start_at.tzinfo)
    if last.year >= 9999:
        raise ValidationError("delay_between_ms", "puts the last email past the year 9998")
    return ScheduleRequest(
        subject=subject,
        body=body,
        html=html,
        recipients=recipients,
        start_at=start_at,
        delay_between_ms=delay,
        hourly_limit=hourly_limit,
        sender=sender,
        daily_limit=daily_limit,
        delay_jitter_ms=jitter,
        name=name,
        send_window=send_window,
        senders=pool,
        steps=check_steps(parse_steps(data.get("steps")), recipients),
    )


async def first_subject(request: ScheduleRequest) -> str:
    """The subject as the first recipient gets it (the lists show it beside the template)."""
    first = request.recipients.accepted[0]
    context = {**first.vars, "email": first.email}
    rendered = await asyncio.to_thread(render_preview, {"subject": request.subject}, context)
    return rendered["subject"]


async def check_campaign_templates(request: ScheduleRequest) -> None:
    """Compile the templates as the worker will (in a thread: compiling a template at the
    size limit takes a few hundred ms of CPU, the event loop keeps serving meanwhile), render
    them for the first recipient under the limits, and refuse line breaks in the values the
    subject (a header) uses."""
    people = request.recipients.accepted
    first = people[0]
    try:
        subject_vars = await asyncio.to_thread(
            check_templates,
            request.subject,
            request.body,
            request.html,
            request.recipients.columns,
            (first.email, first.vars),
        )
    except TemplateProblem as exc:
        raise ValidationError(exc.field, str(exc).removeprefix(f"{exc.field}: ")) from None
    subject_vars.discard("email")
    if not subject_vars:
        return
    for person in people:
        for name in subject_vars:
            value = person.vars.get(name)
            if isinstance(value, str) and one_line(value) != value:
                raise ValidationError(
                    "recipients",
                    f"{person.email}: {name!r} is used in the subject (a header) and contains "
                    "a line break",
                )


def _due_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _send_times(start_at: datetime, delay_ms: int, count: int) -> list[tuple[datetime, int]]:
    """(scheduled_at, due ms) of each email: start_at, then delay_ms apart.

    Shared when there is no delay (the common case): 100,000 recipients make one object.
    """
    if delay_ms == 0:
        return [(start_at, _due_ms(start_at))] * count
    step = timedelta(milliseconds=delay_ms)
    return [(at, _due_ms(at)) for at in (start_at + step * n for n in range(count))]


class CampaignService:
    def __init__(
        self,
        store: Store,
        queue: RedisQueue,
        hooks: Hooks | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.hooks = hooks or Hooks.none()  # campaign_completed fires from here too
        self.settings = settings

    async def schedule(
        self,
        user: User,
        request: ScheduleRequest,
        *,
        idempotency_header: str | None,
        default_sender: Sender | None = None,
    ) -> ScheduleResult:
        """The campaign, its dispatch rows and their queue entries (or the earlier campaign of
        a repeated Idempotency-Key).

        The sender is the one the request names, else `default_sender`, else the user's
        default (made now for a new user, with the configured transport and hourly limit).
        """
        if default_sender is None:
            assert self.settings is not None, "a service without settings needs default_sender"
            default_sender = await senders.default_sender(self.store, user, self.settings)
        if idempotency_header:
            existing = await self.store.campaign_by_idempotency_key(user.id, idempotency_header)
            if existing is not None:
                return ScheduleResult(existing, 0, [], replayed=True)
        sender = default_sender
        if request.sender is not None:
            found = await self.store.find_sender(user.id, request.sender)
            if found is None:
                raise ValidationError("sender", f"no sender {request.sender!r} belongs to you")
            sender = found
        # The owner's suppressed addresses are left out, reported as rejected lines.
        if await leave_out_suppressed(self.store, user.id, request.recipients):
            request.recipients.require_some()
        pool = await pool_for(self.store, self.queue, self.settings, user.id, request)
        sender = pool.senders[0] if pool is not None else sender
        await check_campaign_templates(request)
        shown_subject = await first_subject(request)

        people = request.recipients.accepted
        ids = await self.store.reserve_dispatch_ids(len(people))
        times = _send_times(request.start_at, request.delay_between_ms, len(people))
        try:
            async with self.store.pool.acquire() as conn, conn.transaction():
                campaign_id = await self.store.create_campaign(
                    conn,
                    owner_id=user.id,
                    sender_id=sender.id,
                    subject=request.subject,
                    body_text=request.body,
                    body_html=request.html,
                    start_at=request.start_at,
                    delay_between_ms=request.delay_between_ms,
                    hourly_limit=request.hourly_limit,
                    total=len(people),
                    idempotency_key=idempotency_header,
                    daily_limit=request.daily_limit,
                    delay_jitter_ms=request.delay_jitter_ms,
                    name=request.name,
                    first_subject=shown_subject,
                    send_window=request.send_window,
                )
                if pool is not None:
                    await self.store.add_pool(conn, campaign_id, pool.ids, pool.counts)
                rows = [
                    NewDispatch(
                        dispatch_id,
                        person.email,
                        person.vars,
                        at,
                        idempotency_key(campaign_id, person.email, due_ms * 1000),
                    )
                    for dispatch_id, person, (at, due_ms) in zip(ids, people, times, strict=True)
                ]
                await self.store.copy_dispatches(
                    conn,
                    campaign_id=campaign_id,
                    owner_id=user.id,
                    sender_id=sender.id,
                    rows=rows,
                    senders=None if pool is None else pool.of_row,
                    steps=request.steps,  # and each recipient's place in them
                    day_seconds=getattr(self.settings, "day_seconds", 86_400),
                )
        except asyncpg.UniqueViolationError:
            # A concurrent request with the same Idempotency-Key won the race.
            if idempotency_header:
                existing = await self.store.campaign_by_idempotency_key(user.id, idempotency_header)
                if existing is not None:
                    return ScheduleResult(existing, 0, [], replayed=True)
            raise
        # After the commit: if this process dies here, recovery re-adds the rows from PostgreSQL.
        dues = [due for _, due in times]  # each on its sender's queue (a pool's: several)
        await enqueue_all(self.queue, sender, pool, ids, dues, request.delay_between_ms)
        await self.store.mark_enqueued(campaign_id, True)
        parsed = request.recipients
        return ScheduleResult(
            campaign_id, len(rows), parsed.rejected, parsed.rejected_total,
            suppressed=parsed.suppressed,
        )  # fmt: skip

    # ---- controls: each is one guarded state change, then Redis is brought in line ----

    async def _transition(
        self, user: User, campaign_id: int, to: CampaignStatus, allowed_from: tuple[str, ...]
    ) -> None:
        if await self.store.set_campaign_status(user.id, campaign_id, to, allowed_from):
            return
        detail = await self.store.campaign_detail(user.id, campaign_id)
        if detail is None:
            raise NotFound("no such campaign")
        raise InvalidState(
            f"the campaign is {detail['status']}; only a campaign that is "
            f"{' or '.join(allowed_from)} can become {to.value}",
        )

    async def _unqueue(self, campaign_id: int, rows: list[Any]) -> None:
        by_sender: dict[int, list[int]] = {}
        for row in rows:
            by_sender.setdefault(row["sender_id"], []).append(row["id"])
        for sender_id, ids in by_sender.items():
            await self.queue.remove(sender_id, ids)
            # Its emails come back at their PostgreSQL time: their cap slots are taken anew.
            await self.queue.forget_campaign_slots(sender_id, campaign_id)

    async def _requeue(self, campaign_id: int) -> None:
        # Marked first: if this process dies midway, the sweeper finishes the job.
        await self.store.mark_enqueued(campaign_id, False)
        await requeue(self.store, self.queue, campaign_id=campaign_id)
        await self.store.mark_enqueued(campaign_id, True)

    async def _progress(self, campaign_id: int) -> None:
        """A resumed campaign whose last emails went while it was paused completes now."""
        for done_id, owner_id, status in await self.store.update_campaign_progress([campaign_id]):
            if status == CampaignStatus.COMPLETED:
                await self.hooks.campaign_completed(campaign_id=done_id, owner_id=owner_id)

    async def pause(self, user: User, campaign_id: int) -> None:
        """No new email of the campaign starts; the ones in flight finish."""
        await self._transition(user, campaign_id, CampaignStatus.PAUSED, ("scheduled", "running"))
        await self._unqueue(campaign_id, await self.store.queued_of_campaign(campaign_id))

    async def pause_itself(self, owner_id: int, campaign_id: int, reason: str) -> bool:
        """The feedback policy's pause (consent/policy.py): a user's, with its `reason`; False
        when the campaign was not sending (a user paused or cancelled it, or it completed)."""
        paused = CampaignStatus.PAUSED
        if not await self.store.set_campaign_status(
            owner_id, campaign_id, paused, ("scheduled", "running"), paused_reason=reason
        ):
            return False
        await self._unqueue(campaign_id, await self.store.queued_of_campaign(campaign_id))
        return True

    async def resume(self, user: User, campaign_id: int) -> None:
        """Queue again what is still to send; what was sent is never sent again."""
        await self._transition(user, campaign_id, CampaignStatus.RUNNING, ("paused",))
        await self._requeue(campaign_id)
        await self._progress(campaign_id)

    async def cancel(self, user: User, campaign_id: int) -> int:
        await self._transition(
            user, campaign_id, CampaignStatus.CANCELLED, ("scheduled", "running", "paused")
        )
        cancelled = await self.store.cancel_dispatches(campaign_id)
        await self._unqueue(campaign_id, cancelled)
        return len(cancelled)

    async def retry_failed(self, user: User, campaign_id: int) -> int:
        """Send the failed recipients again (same Message-IDs); others are untouched."""
        await self._transition(
            user, campaign_id, CampaignStatus.RUNNING, ("running", "completed", "scheduled")
        )
        count = await self.store.reset_failed(campaign_id)
        await self._requeue(campaign_id)
        await self._progress(campaign_id)
        return count
