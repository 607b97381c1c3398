"""What people read: the Scheduled and Sent lists (keyset pagination), the inbox, counts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from ..models import (
    DispatchStatus,
)
from .base import Queries


class ListingQueries(Queries):
    async def list_scheduled(
        self, owner_id: int, limit: int, after: tuple[datetime, int] | None
    ) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT d.id, d.recipient, c.subject, d.scheduled_at, d.status, d.campaign_id,
                      d.last_error, d.attempts, d.wait_reason, d.wait_until,
                      c.status AS campaign_status
               FROM dispatches d JOIN campaigns c ON c.id = d.campaign_id
               WHERE d.owner_id = $1 AND d.status IN ('scheduled', 'sending', 'rate_limited')
                 AND ($3::timestamptz IS NULL OR (d.scheduled_at, d.id) > ($3, $4))
               ORDER BY d.scheduled_at, d.id LIMIT $2""",
            owner_id,
            limit,
            after[0] if after else None,
            after[1] if after else 0,
        )

    async def list_finished(
        self, owner_id: int, limit: int, before: tuple[datetime, int] | None
    ) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT d.id, d.recipient, c.subject, d.scheduled_at, d.sent_at, d.finished_at,
                      d.status, d.campaign_id, d.last_error, d.message_id, d.attempts,
                      l.response
               FROM dispatches d JOIN campaigns c ON c.id = d.campaign_id
               LEFT JOIN ledger l ON l.idempotency_key = d.idempotency_key
               WHERE d.owner_id = $1
                 AND d.status IN ('sent', 'failed', 'suppressed', 'bounced', 'complained')
                 AND ($3::timestamptz IS NULL OR (d.finished_at, d.id) < ($3, $4))
               ORDER BY d.finished_at DESC, d.id DESC LIMIT $2""",
            owner_id,
            limit,
            before[0] if before else None,
            before[1] if before else 0,
        )

    async def list_inbox(
        self, owner_id: int, limit: int, before_id: int | None
    ) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT id, dispatch_id, message_id, mail_from, recipients, subject, received_at,
                      deliveries
               FROM captured_messages
               WHERE owner_id = $1 AND ($3::bigint IS NULL OR id < $3)
               ORDER BY id DESC LIMIT $2""",
            owner_id,
            limit,
            before_id,
        )

    async def inbox_message(self, owner_id: int, message_id: int) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            "SELECT * FROM captured_messages WHERE owner_id = $1 AND id = $2",
            owner_id,
            message_id,
        )

    async def status_counts(self, owner_id: int) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT status, count(*) AS n FROM dispatches WHERE owner_id = $1 GROUP BY status",
            owner_id,
        )
        counts = {s.value: 0 for s in DispatchStatus}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    async def dispatch_owners(
        self, ids: Sequence[int], owner_ids: Sequence[int]
    ) -> list[asyncpg.Record]:
        """(owner_id, campaign_id, ids) of the given dispatches, only for the given owners."""
        return await self.pool.fetch(
            """SELECT owner_id, campaign_id, array_agg(id ORDER BY id) AS ids FROM dispatches
               WHERE id = ANY($1::bigint[]) AND owner_id = ANY($2::bigint[])
               GROUP BY owner_id, campaign_id""",
            ids,
            owner_ids,
        )
