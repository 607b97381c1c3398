"""Suppressions: the addresses an owner's campaigns never send to again."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from ..db import Conn
from .base import Queries


class Suppression(NamedTuple):
    id: int
    email: str  # normalized (consent.addresses.normalize_address)
    reason: str
    source: str
    detail: str
    dispatch_id: int | None
    created_at: datetime


def suppression_from(row: asyncpg.Record) -> Suppression:
    return Suppression(
        row["id"],
        row["email_normalized"],
        row["reason"],
        row["source"],
        row["detail"],
        row["dispatch_id"],
        row["created_at"],
    )


_COLUMNS = "id, email_normalized, reason, source, detail, dispatch_id, created_at"


class SuppressionQueries(Queries):
    async def suppress(
        self,
        owner_id: int,
        emails: Sequence[str],
        reason: str,
        source: str,
        detail: str = "",
        dispatch_id: int | None = None,
        conn: Conn | None = None,
    ) -> int:
        """Suppress normalized addresses; one already suppressed keeps its first reason.
        Returns how many were new."""
        if not emails:
            return 0
        status = await (conn or self.pool).execute(
            """INSERT INTO suppressions (owner_id, email_normalized, reason, source, detail,
                                         dispatch_id)
               SELECT $1, e, $3, $4, $5, $6 FROM unnest($2::text[]) AS e
               ON CONFLICT (owner_id, email_normalized) DO NOTHING""",
            owner_id,
            list(dict.fromkeys(emails)),
            reason,
            source,
            detail[:1000],
            dispatch_id,
        )
        return int(status.rsplit(" ", 1)[1])

    async def suppress_rows(
        self,
        owner_id: int,
        emails: Sequence[str],
        reasons: Sequence[str],
        details: Sequence[str],
        source: str,
    ) -> int:
        """Suppress normalized addresses, each with its own reason and detail (a CSV
        import), in one statement; one already suppressed keeps its first reason. Returns
        how many were new."""
        if not emails:
            return 0
        status = await self.pool.execute(
            """INSERT INTO suppressions (owner_id, email_normalized, reason, source, detail)
               SELECT $1, e, r, $5, d
               FROM unnest($2::text[], $3::text[], $4::text[]) AS t(e, r, d)
               ON CONFLICT (owner_id, email_normalized) DO NOTHING""",
            owner_id,
            list(emails),
            list(reasons),
            [d[:1000] for d in details],
            source,
        )
        return int(status.rsplit(" ", 1)[1])

    async def unsuppress(self, owner_id: int, email: str) -> bool:
        status = await self.pool.execute(
            "DELETE FROM suppressions WHERE owner_id = $1 AND email_normalized = $2",
            owner_id,
            email,
        )
        return bool(status.endswith(" 1"))

    async def suppression(self, owner_id: int, email: str) -> Suppression | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM suppressions WHERE owner_id = $1 AND email_normalized = $2",
            owner_id,
            email,
        )
        return None if row is None else suppression_from(row)

    async def suppressions_among(
        self, owner_id: int, emails: Iterable[str]
    ) -> dict[str, Suppression]:
        """The suppressed ones among an owner's normalized addresses (schedule-time check).

        A join with the array, not `= ANY(array)`: the planner estimates an ANY element by
        element, 0.6 s of planning for 1,000,000 addresses (3.1 s in all vs 1.1 s)."""
        rows = await self.pool.fetch(
            """SELECT s.id, s.email_normalized, s.reason, s.source, s.detail, s.dispatch_id,
                      s.created_at
               FROM unnest($2::text[]) AS e JOIN suppressions s
                 ON s.owner_id = $1 AND s.email_normalized = e""",
            owner_id,
            list(set(emails)),
        )
        return {r["email_normalized"]: suppression_from(r) for r in rows}

    async def suppressed_emails(self, owner_id: int, limit: int) -> list[str]:
        """Up to `limit` of the owner's suppressed addresses (fewer: that is the whole list)."""
        rows = await self.pool.fetch(
            "SELECT email_normalized FROM suppressions WHERE owner_id = $1 LIMIT $2",
            owner_id,
            limit,
        )
        return [r[0] for r in rows]

    async def suppressed_pairs(self, pairs: Iterable[tuple[int, str]]) -> set[tuple[int, str]]:
        """Which (owner id, normalized address) pairs are suppressed (send-time check of a
        claimed batch, which holds many owners' emails)."""
        pairs = list(set(pairs))
        if not pairs:
            return set()
        rows = await self.pool.fetch(
            """SELECT s.owner_id, s.email_normalized
               FROM unnest($1::bigint[], $2::text[]) AS p(owner_id, email)
               JOIN suppressions s ON s.owner_id = p.owner_id AND s.email_normalized = p.email""",
            [p[0] for p in pairs],
            [p[1] for p in pairs],
        )
        return {(r["owner_id"], r["email_normalized"]) for r in rows}

    async def list_suppressions(
        self, owner_id: int, limit: int, before_id: int | None = None
    ) -> list[Suppression]:
        """Newest first, keyset-paged on the id."""
        rows = await self.pool.fetch(
            f"""SELECT {_COLUMNS} FROM suppressions
                WHERE owner_id = $1 AND ($3::bigint IS NULL OR id < $3)
                ORDER BY id DESC LIMIT $2""",
            owner_id,
            limit,
            before_id,
        )
        return [suppression_from(r) for r in rows]
