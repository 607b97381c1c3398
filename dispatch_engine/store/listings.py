"""What people read: the Scheduled and Sent lists (keyset pagination), the inbox, counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..models import (
    DispatchStatus,
)
from .base import Queries

# The statuses each list shows, written out in its SQL: each matches its partial index
# (dispatches_owner_queued, dispatches_owner_finished), which the planner only uses when the
# query's own condition implies the index's.
QUEUED_LISTED = ("scheduled", "sending", "rate_limited")
FINISHED_LISTED = ("sent", "failed", "suppressed", "bounced", "complained")
_QUEUED_SQL = ", ".join(f"'{s}'" for s in QUEUED_LISTED)
_FINISHED_SQL = ", ".join(f"'{s}'" for s in FINISHED_LISTED)


def _filters(n: int) -> str:
    """`EmailFilter.params()` as parameters $n .. $n+3: statuses, campaign, sender, address."""
    return f"""AND d.status = ANY(${n}::text[])
                 AND (${n + 1}::bigint IS NULL OR d.campaign_id = ${n + 1})
                 AND (${n + 2}::bigint IS NULL OR d.sender_id = ${n + 2})
                 AND (${n + 3}::text IS NULL OR d.recipient ILIKE ${n + 3})"""


@dataclass(frozen=True)
class EmailFilter:
    """What an emails list keeps: these statuses, of this campaign and sender, with this in
    the address (any case)."""

    statuses: tuple[str, ...]
    campaign_id: int | None = None
    sender_id: int | None = None
    address: str | None = None

    def params(self) -> tuple[list[str], int | None, int | None, str | None]:
        like = None
        if self.address:  # LIKE's own characters match themselves
            escaped = self.address.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like = f"%{escaped}%"
        return list(self.statuses), self.campaign_id, self.sender_id, like


_ALL_QUEUED = EmailFilter(QUEUED_LISTED)
_ALL_FINISHED = EmailFilter(FINISHED_LISTED)


def _keyset(column: str, newest_first: bool, backward: bool) -> tuple[str, str]:
    """(the cursor's condition, ORDER BY) of a list in its order, or read back from a cursor."""
    descending = newest_first != backward
    op, order = ("<", "DESC") if descending else (">", "")
    return (
        f"($3::timestamptz IS NULL OR (d.{column}, d.id) {op} ($3, $4))",
        f"d.{column} {order}, d.id {order}",
    )


class ListingQueries(Queries):
    async def list_scheduled(
        self,
        owner_id: int,
        limit: int,
        after: tuple[datetime, int] | None,
        match: EmailFilter = _ALL_QUEUED,
        *,
        backward: bool = False,
    ) -> list[asyncpg.Record]:
        """Queued emails, soonest first, after the cursor (`backward`: before it, nearest
        first: the caller reverses them)."""
        cursor, order = _keyset("scheduled_at", False, backward)
        return await self.pool.fetch(
            f"""SELECT d.id, d.recipient, c.subject, d.scheduled_at, d.status, d.campaign_id,
                      d.last_error, d.attempts, d.wait_reason, d.wait_until,
                      c.status AS campaign_status, d.vars, c.name AS campaign_name
               FROM dispatches d JOIN campaigns c ON c.id = d.campaign_id
               WHERE d.owner_id = $1 AND d.status IN ({_QUEUED_SQL})
                 {_filters(5)}
                 AND {cursor}
               ORDER BY {order} LIMIT $2""",
            owner_id,
            limit,
            after[0] if after else None,
            after[1] if after else 0,
            *match.params(),
        )

    async def list_finished(
        self,
        owner_id: int,
        limit: int,
        before: tuple[datetime, int] | None,
        match: EmailFilter = _ALL_FINISHED,
        *,
        backward: bool = False,
    ) -> list[asyncpg.Record]:
        """Finished emails, newest first, older than the cursor (`backward`: newer than it,
        nearest first: the caller reverses them)."""
        cursor, order = _keyset("finished_at", True, backward)
        return await self.pool.fetch(
            f"""SELECT d.id, d.recipient, c.subject, d.scheduled_at, d.sent_at, d.finished_at,
                      d.status, d.campaign_id, d.last_error, d.message_id, d.attempts,
                      l.response, d.vars, c.name AS campaign_name
               FROM dispatches d JOIN campaigns c ON c.id = d.campaign_id
               LEFT JOIN ledger l ON l.idempotency_key = d.idempotency_key
               WHERE d.owner_id = $1 AND d.status IN ({_FINISHED_SQL})
                 {_filters(5)}
                 AND {cursor}
               ORDER BY {order} LIMIT $2""",
            owner_id,
            limit,
            before[0] if before else None,
            before[1] if before else 0,
            *match.params(),
        )

    async def count_listed(self, owner_id: int, match: EmailFilter, cap: int) -> int:
        """How many emails a list holds under `match`, counted up to `cap` (a tab's count)."""
        listed = _QUEUED_SQL if set(match.statuses) <= set(QUEUED_LISTED) else _FINISHED_SQL
        value = await self.pool.fetchval(
            f"""SELECT count(*) FROM (
                   SELECT 1 FROM dispatches d
                   WHERE d.owner_id = $1 AND d.status IN ({listed})
                     {_filters(3)}
                   LIMIT $2) capped""",
            owner_id,
            cap,
            *match.params(),
        )
        return int(value)

    async def campaign_choices(self, owner_id: int, limit: int) -> list[asyncpg.Record]:
        """The newest campaigns, for a filter's choices: id, name, subjects."""
        return await self.pool.fetch(
            """SELECT id, name, subject, first_subject FROM campaigns WHERE owner_id = $1
               ORDER BY id DESC LIMIT $2""",
            owner_id,
            limit,
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
