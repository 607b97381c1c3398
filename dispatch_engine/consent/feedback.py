"""The one handler of feedback: every reader (one-click unsubscribe, the IMAP bounce reader,
provider webhooks, the worker's permanent refusals) turns what it read into `FeedbackEvent`s
and calls `Feedback.handle`.

An event only ever acts on the dispatch it names (by a verified token's id, or by our
Message-ID), and on that dispatch's own recipient and owner: a report cannot suppress an
address of another tenant, or an address it merely mentions. Each event is recorded once by
its fingerprint, so a report read twice changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from ..db import Conn
from ..models import DispatchStatus
from ..store import Store
from ..store.feedback import FeedbackTarget
from .addresses import AddressError, normalize_address
from .settings import ConsentSettings

log = logging.getLogger("dispatch_engine.feedback")


class FeedbackKind(StrEnum):
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    REPLY = "reply"
    AUTO_REPLY = "auto_reply"


class SuppressionReason(StrEnum):
    UNSUBSCRIBED = "unsubscribed"
    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    MANUAL = "manual"
    SOFT_BOUNCE_LIMIT = "soft_bounce_limit"


# What an event does at once: the reason it suppresses for, the status its dispatch takes.
_SUPPRESSES = {
    FeedbackKind.HARD_BOUNCE: SuppressionReason.HARD_BOUNCE,
    FeedbackKind.COMPLAINT: SuppressionReason.COMPLAINT,
    FeedbackKind.UNSUBSCRIBE: SuppressionReason.UNSUBSCRIBED,
}
_MARKS = {
    FeedbackKind.HARD_BOUNCE: DispatchStatus.BOUNCED,
    FeedbackKind.COMPLAINT: DispatchStatus.COMPLAINED,
}
# Sequences: these stop the recipient's follow-ups (the member's stop reason).
_STOPS = {
    FeedbackKind.REPLY: "replied",
    FeedbackKind.UNSUBSCRIBE: "unsubscribed",
    FeedbackKind.HARD_BOUNCE: "bounced",
    FeedbackKind.COMPLAINT: "complained",
}


@dataclass(frozen=True)
class FeedbackEvent:
    """One report about one email. Name the dispatch by `dispatch_id` (from a verified
    token only) or by the `message_id` of the email the report is about."""

    kind: FeedbackKind
    source: str  # one_click, imap, smtp, ses, sendgrid, mailgun, postmark, …
    fingerprint: str  # unique per report and recipient: the same report twice is one event
    dispatch_id: int | None = None
    message_id: str | None = None
    detail: str = ""  # one line: the diagnostic, the provider's reason
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class Applied:
    """What one new event did."""

    event: FeedbackEvent
    target: FeedbackTarget
    email: str  # the dispatch's recipient, normalized
    suppressed: SuppressionReason | None  # newly suppressed for this reason
    status: DispatchStatus | None  # the dispatch's new status


@dataclass
class FeedbackResult:
    applied: list[Applied] = field(default_factory=list)
    duplicates: int = 0
    unmatched: int = 0


class Aftermath(Protocol):
    """What follows new events, after their commit (consent/policy.py: hooks, auto-pause)."""

    async def applied(self, applied: Sequence[Applied]) -> None: ...


class Feedback:
    def __init__(
        self, store: Store, settings: ConsentSettings, policy: Aftermath | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.policy = policy

    async def handle(self, events: Sequence[FeedbackEvent]) -> FeedbackResult:
        result = FeedbackResult()
        for event in events:
            target = await self.store.feedback_target(event.dispatch_id, event.message_id)
            if target is None:
                result.unmatched += 1
                log.info("%s %s from %s names no dispatch of ours", event.kind, event.fingerprint,
                         event.source)  # fmt: skip
                continue
            applied = await self._apply(event, target)
            if applied is None:
                result.duplicates += 1
            else:
                result.applied.append(applied)
        if result.applied and self.policy is not None:
            await self.policy.applied(result.applied)
        return result

    async def _apply(self, event: FeedbackEvent, target: FeedbackTarget) -> Applied | None:
        try:
            email = normalize_address(target.recipient)
        except AddressError:  # schedule-time validation makes this unreachable for new rows
            email = target.recipient.strip().lower()
        async with self.store.pool.acquire() as conn, conn.transaction():
            new = await self.store.record_feedback(
                conn,
                target,
                fingerprint=event.fingerprint,
                kind=event.kind.value,
                source=event.source,
                email=email,
                detail=event.detail,
                occurred_at=event.occurred_at,
            )
            if not new:
                return None
            status = _MARKS.get(event.kind)
            if status is not None and not await self.store.mark_feedback_status(
                conn, target.dispatch_id, status.value, event.detail
            ):
                status = None
            reason = _SUPPRESSES.get(event.kind)
            if event.kind == FeedbackKind.SOFT_BOUNCE and await self._over_soft_limit(
                conn, target.owner_id, email
            ):
                reason = SuppressionReason.SOFT_BOUNCE_LIMIT
            if reason is not None and not await self.store.suppress(
                target.owner_id,
                [email],
                reason.value,
                event.source,
                event.detail,
                target.dispatch_id,
                conn=conn,
            ):
                reason = None  # suppressed before, for its first reason
            if event.kind in _STOPS:  # no more follow-ups for this recipient (sequences)
                await self.store.stop_sequence_of(conn, target.dispatch_id, _STOPS[event.kind])
        return Applied(event, target, email, reason, status)

    async def _over_soft_limit(self, conn: Conn, owner_id: int, email: str) -> bool:
        since = datetime.now(UTC) - timedelta(days=self.settings.soft_bounce_days)
        count = await self.store.soft_bounces_since(conn, owner_id, email, since)
        return count >= self.settings.soft_bounce_limit
