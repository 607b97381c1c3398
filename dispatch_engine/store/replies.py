"""Replies: the reply mailboxes to read, where each reader got to, the replies matched to our
emails (docs/replies.md)."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

import asyncpg

from .base import Queries
from .feedback import FeedbackTarget

RECENT_CAMPAIGNS = 500  # a reply matched by its subject names one of the owner's latest
_TEMPLATE_PART = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


def subject_pattern(template: str, normalize: Any) -> re.Pattern[str]:
    """A campaign's subject template as a pattern of the subjects it renders to: each
    `{{ … }}` (or block) stands for any text; compared as `normalize` leaves a subject."""
    parts = _TEMPLATE_PART.split(template)
    literal = [re.escape(normalize(p) if i == 0 else " ".join(p.split()).casefold())
               for i, p in enumerate(parts)]  # fmt: skip
    return re.compile(".+?".join(literal), re.DOTALL)


class ReplyQueries(Queries):
    async def reply_mailboxes(self) -> list[asyncpg.Record]:
        """Every sender that names a reply mailbox (not archived)."""
        return await self.pool.fetch(
            """SELECT id, owner_id, from_address, reply_mailbox FROM senders
               WHERE reply_mailbox IS NOT NULL AND archived_at IS NULL ORDER BY id"""
        )

    async def reply_cursor(self, sender_id: int, mailbox: str) -> tuple[int, int] | None:
        """(UIDVALIDITY, last UID read) of this mailbox of the sender, when it was read."""
        row = await self.pool.fetchrow(
            """SELECT uidvalidity, last_uid FROM reply_mailbox_cursors
               WHERE sender_id = $1 AND mailbox = $2""",
            sender_id,
            mailbox,
        )
        return None if row is None else (row["uidvalidity"], row["last_uid"])

    async def save_reply_cursor(
        self, sender_id: int, mailbox: str, uidvalidity: int, last_uid: int
    ) -> None:
        await self.pool.execute(
            """INSERT INTO reply_mailbox_cursors (sender_id, mailbox, uidvalidity, last_uid)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (sender_id) DO UPDATE SET mailbox = $2, uidvalidity = $3,
                      last_uid = $4, read_at = now(), last_error = NULL""",
            sender_id,
            mailbox,
            uidvalidity,
            last_uid,
        )

    async def reply_mailbox_failed(self, sender_id: int, error: str) -> None:
        """Say why the mailbox could not be read (shown on the sender)."""
        await self.pool.execute(
            "UPDATE reply_mailbox_cursors SET last_error = $2 WHERE sender_id = $1",
            sender_id,
            error[:500],
        )

    async def reply_target_by_subject(
        self, owner_id: int, sender_id: int, author: str, subject: str, normalize: Any
    ) -> tuple[FeedbackTarget, bytes] | None:
        """The owner's latest email from this sender to `author` whose campaign's subject
        renders to `subject` (normalized), with its idempotency key; None if there is none."""
        campaigns = await self.pool.fetch(
            "SELECT id, subject FROM campaigns WHERE owner_id = $1 ORDER BY id DESC LIMIT $2",
            owner_id,
            RECENT_CAMPAIGNS,
        )
        ids = [
            c["id"]
            for c in campaigns
            if subject_pattern(c["subject"], normalize).fullmatch(subject)
        ]
        if not ids:
            return None
        row = await self.pool.fetchrow(
            """SELECT id, owner_id, campaign_id, sender_id, recipient, status, idempotency_key
               FROM dispatches
               WHERE campaign_id = ANY($1::bigint[]) AND owner_id = $2 AND sender_id = $3
                 AND status IN ('sent', 'bounced', 'complained') AND lower(recipient) = $4
               ORDER BY sent_at DESC NULLS LAST, id DESC LIMIT 1""",
            ids,
            owner_id,
            sender_id,
            author.lower(),
        )
        if row is None:
            return None
        return FeedbackTarget(*list(row.values())[:6]), bytes(row["idempotency_key"])

    async def record_reply(
        self,
        target: FeedbackTarget,
        *,
        fingerprint: str,
        kind: str,
        matched_by: str,
        author: str,
        subject: str,
        first_lines: str,
        received_at: datetime,
        returns_on: date | None,
    ) -> bool:
        """List it on its campaign once (its feedback event is recorded first)."""
        row = await self.pool.fetchrow(
            """INSERT INTO replies (fingerprint, owner_id, campaign_id, dispatch_id, sender_id,
                                    kind, matched_by, from_address, subject, snippet,
                                    received_at, returns_on)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               ON CONFLICT (fingerprint) DO NOTHING RETURNING id""",
            fingerprint[:500],
            target.owner_id,
            target.campaign_id,
            target.dispatch_id,
            target.sender_id,
            kind,
            matched_by,
            author[:320],
            subject[:500],
            first_lines[:1000],
            received_at,
            returns_on,
        )
        return row is not None

    async def owns_campaign(self, owner_id: int, campaign_id: int) -> bool:
        found = await self.pool.fetchval(
            "SELECT 1 FROM campaigns WHERE owner_id = $1 AND id = $2", owner_id, campaign_id
        )
        return found is not None

    async def campaign_replies(
        self, owner_id: int, campaign_id: int, kind: str, limit: int, before: int | None
    ) -> list[asyncpg.Record]:
        """A campaign's replies of `kind`, newest first, after the cursor `before`."""
        return await self.pool.fetch(
            """SELECT r.id, r.dispatch_id, r.kind, r.matched_by, r.from_address, r.subject,
                      r.snippet, r.received_at, r.returns_on, d.recipient
               FROM replies r JOIN dispatches d ON d.id = r.dispatch_id
               WHERE r.owner_id = $1 AND r.campaign_id = $2 AND r.kind = $3
                 AND ($5::bigint IS NULL OR r.id < $5)
               ORDER BY r.id DESC LIMIT $4""",
            owner_id,
            campaign_id,
            kind,
            limit,
            before,
        )
