"""Feedback: finding the dispatch a report names, and recording each report once."""

from __future__ import annotations

import re
from datetime import datetime
from typing import NamedTuple

from ..db import Conn
from .base import Queries, db_text

# message_ids.message_id_for: `<40 hex digits of the idempotency key@domain>`.
_OUR_MESSAGE_ID = re.compile(r"<?([0-9a-f]{40})@[^>\s]+>?")


class FeedbackTarget(NamedTuple):
    """The dispatch a report was matched to."""

    dispatch_id: int
    owner_id: int
    campaign_id: int
    sender_id: int
    recipient: str
    status: str


_TARGET = "SELECT id, owner_id, campaign_id, sender_id, recipient, status FROM dispatches"


def key_prefix_of(message_id: str) -> bytes | None:
    """The idempotency-key prefix inside one of our Message-IDs, else None."""
    found = _OUR_MESSAGE_ID.fullmatch(message_id.strip().lower())
    return bytes.fromhex(found.group(1)) if found else None


class FeedbackQueries(Queries):
    async def feedback_target(
        self, dispatch_id: int | None, message_id: str | None
    ) -> FeedbackTarget | None:
        """The dispatch named by its id (a verified token) or by our Message-ID."""
        row = None
        if dispatch_id is not None:
            row = await self.pool.fetchrow(f"{_TARGET} WHERE id = $1", dispatch_id)
        elif message_id:
            prefix = key_prefix_of(message_id)
            if prefix is not None:  # a range on the unique index, no index of its own
                row = await self.pool.fetchrow(
                    f"{_TARGET} WHERE idempotency_key BETWEEN $1 AND $2 LIMIT 1",
                    prefix + b"\x00" * 12,
                    prefix + b"\xff" * 12,
                )
        return None if row is None else FeedbackTarget(*row)

    async def record_feedback(
        self,
        conn: Conn,
        target: FeedbackTarget,
        *,
        fingerprint: str,
        kind: str,
        source: str,
        email: str,
        detail: str,
        occurred_at: datetime | None,
    ) -> bool:
        """Insert the report once; False: this fingerprint was recorded before."""
        row = await conn.fetchrow(
            """INSERT INTO feedback_events (fingerprint, owner_id, dispatch_id, campaign_id,
                                            sender_id, kind, source, email_normalized, detail,
                                            occurred_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, coalesce($10, now()))
               ON CONFLICT (fingerprint) DO NOTHING RETURNING id""",
            db_text(fingerprint, 500),
            target.owner_id,
            target.dispatch_id,
            target.campaign_id,
            target.sender_id,
            kind,
            source,
            email,
            db_text(detail, 1000),
            occurred_at,
        )
        return row is not None

    async def mark_feedback_status(
        self, conn: Conn, dispatch_id: int, status: str, detail: str
    ) -> bool:
        """A sent (or failed-for-good) email becomes bounced or complained; a complaint
        outranks a bounce. False: it was in no state a report can change."""
        allowed = ("sent", "failed") if status == "bounced" else ("sent", "failed", "bounced")
        result = await conn.execute(
            """UPDATE dispatches SET status = $2, last_error = $3,
                      finished_at = coalesce(finished_at, now()), updated_at = now()
               WHERE id = $1 AND status = ANY($4::text[])""",
            dispatch_id,
            status,
            db_text(detail, 1000),
            list(allowed),
        )
        return bool(result.endswith(" 1"))

    async def soft_bounces_since(
        self, conn: Conn, owner_id: int, email: str, since: datetime
    ) -> int:
        count = await conn.fetchval(
            """SELECT count(*) FROM feedback_events
               WHERE owner_id = $1 AND email_normalized = $2 AND kind = 'soft_bounce'
                 AND occurred_at >= $3""",
            owner_id,
            email,
            since,
        )
        return int(count)
