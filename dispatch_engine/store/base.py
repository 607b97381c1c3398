"""What every query module shares: the pool, row conversions and the records they return."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from ..models import (
    DispatchStatus,
    Sender,
    User,
    Warmup,
)


def db_text(value: str, limit: int) -> str:
    """Outside text (a remote MTA's diagnostic, a provider's event id) as PostgreSQL `text`
    can hold it: without NUL characters, which it refuses, cut at `limit` characters."""
    return value.replace("\x00", "")[:limit]


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def user_from(row: asyncpg.Record) -> User:
    return User(row["id"], row["email"], row["name"], row["avatar_url"])


def sender_from(row: asyncpg.Record) -> Sender:
    return Sender(
        row["id"],
        row["owner_id"],
        row["from_address"],
        row["display_name"],
        row["reply_to"],
        row["transport"],
        row["transport_settings"],
        row["hourly_limit"],
        row["min_gap_ms"],
        row["is_default"],
        row.get("login_failures", 0),
        row.get("parked_reason"),
        row.get("parked_at"),
        row.get("daily_limit"),
        row.get("delay_jitter_ms") or 0,
        row.get("transactional") or False,
        warmup_from(row),
        dkim_selector=row.get("dkim_selector"),
        dkim_domain=row.get("dkim_domain"),
        dkim_private_key=row.get("dkim_private_key"),
        dkim_public_key=row.get("dkim_public_key"),
        reply_mailbox=row.get("reply_mailbox"),
    )


def warmup_from(row: asyncpg.Record) -> Warmup | None:
    if row.get("warmup_start") is None:
        return None
    return Warmup(
        row["warmup_start"], row["warmup_step"], row["warmup_max"], row["warmup_started_at"]
    )


class NewDispatch(NamedTuple):
    """One row of a campaign's COPY (a tuple: 100,000 of them are made per big POST)."""

    id: int
    recipient: str
    vars: dict[str, Any]
    scheduled_at: datetime
    idempotency_key: bytes


@dataclass(frozen=True)
class SendOutcome:
    """What the worker learned about one dispatch, recorded in one group commit."""

    dispatch_id: int
    idempotency_key: bytes
    status: DispatchStatus  # sent, failed, scheduled (retry)
    campaign_id: int
    recipient: str
    message_id: str = ""
    response: str = ""
    error: str | None = None
    retry_at: datetime | None = None
    wait_reason: str | None = None  # a retry that waits for its sender (a WaitReason)
    bounce: str | None = None  # a FeedbackKind: a refusal at RCPT/DATA that is a bounce


class Queries:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
