"""Statuses and the records that cross module boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from .weekly import WeeklyWindow


class DispatchStatus(StrEnum):
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"  # never sent: its address was suppressed before its send
    BOUNCED = "bounced"  # sent, then a hard bounce came back (or refused for good at RCPT/DATA)
    COMPLAINED = "complained"  # sent, then the recipient reported it as spam


# A dispatch in one of these should be in Redis (queued or leased).
QUEUED_STATES = frozenset(
    {DispatchStatus.SCHEDULED, DispatchStatus.SENDING, DispatchStatus.RATE_LIMITED}
)
TERMINAL_STATES = frozenset(
    {
        DispatchStatus.SENT,
        DispatchStatus.FAILED,
        DispatchStatus.CANCELLED,
        DispatchStatus.SUPPRESSED,
        DispatchStatus.BOUNCED,
        DispatchStatus.COMPLAINED,
    }
)


class CampaignStatus(StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"


@dataclass(frozen=True)
class User:
    id: int
    email: str
    name: str
    avatar_url: str | None


@dataclass(frozen=True)
class Warmup:
    """A new mailbox's ramp: `start` a day, `step` more each day, at most `max` (warmup.py)."""

    start: int
    step: int
    max: int
    started_at: datetime


@dataclass(frozen=True)
class Sender:
    id: int
    owner_id: int
    from_address: str
    display_name: str
    reply_to: str | None
    transport: str
    transport_settings: dict[str, Any]
    hourly_limit: int
    min_gap_ms: int
    is_default: bool = False
    # The server refused its login repeatedly: all its emails wait (sender_health.py).
    login_failures: int = 0
    parked_reason: str | None = None
    parked_at: datetime | None = None
    daily_limit: int | None = None
    delay_jitter_ms: int = 0  # a random extra gap in [0, delay_jitter_ms] after min_gap_ms
    transactional: bool = False  # may leave out the unsubscribe footer (never the headers)
    warmup: Warmup | None = None
    # DKIM (dispatch_engine/dkim): selector, d= domain, the sealed private key, its public key
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_private_key: str | None = None  # sealed (secretbox.py); never shown
    dkim_public_key: str | None = None
    reply_mailbox: dict[str, Any] | None = None  # its IMAP inbox for replies; password sealed


@dataclass(frozen=True)
class StepContent:
    """A follow-up's templates (sequences): `subject` None is "Re: " + the first subject."""

    step: int
    subject: str | None
    body_text: str
    body_html: str | None


@dataclass(frozen=True)
class CampaignContent:
    """What a worker needs to render a campaign's emails; immutable once created."""

    id: int
    owner_id: int
    sender_id: int
    subject: str
    body_text: str
    body_html: str | None
    delay_between_ms: int
    hourly_limit: int | None
    daily_limit: int | None = None
    delay_jitter_ms: int = 0
    send_window: WeeklyWindow | None = None  # applied in each recipient's own time zone
    steps: tuple[StepContent, ...] = ()  # follow-ups of a sequence, in order


@dataclass(frozen=True)
class DispatchJob:
    """One claimed dispatch as the worker loads it."""

    id: int
    campaign_id: int
    sender_id: int
    owner_id: int
    recipient: str
    vars: dict[str, Any]
    status: DispatchStatus
    campaign_status: CampaignStatus
    idempotency_key: bytes
    attempts: int
    scheduled_at: datetime
    step: int = 0  # a sequence's follow-up: 1..10
    # A follow-up's: the Message-ID the first step went out with (its sender may have
    # changed since, when a pool moved the recipient).
    thread_message_id: str | None = None
