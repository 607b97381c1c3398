"""Mailbox pools (docs/pools.md): a campaign's senders, and moving a sender's queued
recipients to the others when it leaves the rotation."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from ..db import Conn
from .base import Queries

_QUEUED = ("scheduled", "rate_limited")  # not `sending`: an attempt has it, it stays
_LIVE = ("scheduled", "running", "paused")
RATED = ("hard_bounce", "complaint")


async def pool_of(pool: asyncpg.Pool, campaign_id: int) -> list[dict[str, Any]]:
    """The pool's senders in order with their emails of the campaign by status ([] for a
    campaign of one sender)."""
    rows = await pool.fetch(
        """SELECT p.sender_id, s.from_address, p.assigned, p.left_at, p.left_reason,
                  p.moved, s.parked_reason
           FROM campaign_senders p JOIN senders s ON s.id = p.sender_id
           WHERE p.campaign_id = $1 ORDER BY p.position""",
        campaign_id,
    )
    if not rows:
        return []
    counts = await pool.fetch(
        """SELECT sender_id, status, count(*) AS n FROM dispatches
           WHERE campaign_id = $1 GROUP BY sender_id, status""",
        campaign_id,
    )
    by_sender: dict[int, dict[str, int]] = {}
    for r in counts:
        by_sender.setdefault(r["sender_id"], {})[r["status"]] = r["n"]
    return [dict(r) | {"counts": by_sender.get(r["sender_id"], {})} for r in rows]


class PoolQueries(Queries):
    async def add_pool(
        self, conn: Conn, campaign_id: int, sender_ids: Sequence[int], counts: Sequence[int]
    ) -> None:
        await conn.executemany(
            """INSERT INTO campaign_senders (campaign_id, sender_id, position, assigned)
               VALUES ($1, $2, $3, $4)""",
            [
                (campaign_id, s, i, n)
                for i, (s, n) in enumerate(zip(sender_ids, counts, strict=True))
            ],
        )

    async def pool_of(self, campaign_id: int) -> list[dict[str, Any]]:
        return await pool_of(self.pool, campaign_id)

    # ---- leaving the rotation (pools/rotation.py) ----

    async def parked_pool_members(self) -> list[asyncpg.Record]:
        """(campaign, sender, owner, why) of senders still in a live pool's rotation but
        parked for refused logins."""
        return await self.pool.fetch(
            """SELECT p.campaign_id, p.sender_id, c.owner_id, s.parked_reason AS reason
               FROM senders s
               JOIN campaign_senders p ON p.sender_id = s.id AND p.left_at IS NULL
               JOIN campaigns c ON c.id = p.campaign_id AND c.status = ANY($1::text[])
               WHERE s.parked_reason IS NOT NULL""",
            list(_LIVE),
        )

    async def rated_pool_senders(self, after_event: int) -> tuple[list[asyncpg.Record], int]:
        """Senders in a live pool's rotation with a hard bounce or complaint recorded after
        event `after_event`, and the last event id seen (what the next call starts from)."""
        last = await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM feedback_events")
        rows = await self.pool.fetch(
            """SELECT DISTINCT p.sender_id, s.owner_id FROM feedback_events f
               JOIN campaign_senders p ON p.sender_id = f.sender_id AND p.left_at IS NULL
               JOIN campaigns c ON c.id = p.campaign_id AND c.status = ANY($1::text[])
               JOIN senders s ON s.id = p.sender_id
               WHERE f.id > $2 AND f.id <= $3 AND f.kind = ANY($4::text[])""",
            list(_LIVE),
            after_event,
            last,
            list(RATED),
        )
        return rows, int(last)

    async def sender_rates(
        self, owner_id: int, sender_id: int, since: datetime
    ) -> tuple[int, int, int]:
        """(sent, hard bounces, complaints) of one sender since `since`: the numbers of the
        feedback policy's sender counts (sends finished then, reports by kind)."""
        sent = await self.pool.fetchval(
            """SELECT count(*) FROM dispatches
               WHERE owner_id = $1 AND finished_at >= $3 AND sender_id = $2
                 AND status IN ('sent', 'failed', 'suppressed', 'bounced', 'complained')
                 AND status IN ('sent', 'bounced', 'complained')""",
            owner_id,
            sender_id,
            since,
        )
        events = await self.pool.fetch(
            """SELECT kind, count(*) AS n FROM feedback_events
               WHERE sender_id = $1 AND occurred_at >= $2 AND kind = ANY($3::text[])
               GROUP BY kind""",
            sender_id,
            since,
            list(RATED),
        )
        found = {r["kind"]: r["n"] for r in events}
        return int(sent), found.get("hard_bounce", 0), found.get("complaint", 0)

    async def live_pools_of(self, sender_id: int) -> list[asyncpg.Record]:
        """The live pools the sender is still in the rotation of: (campaign, owner)."""
        return await self.pool.fetch(
            """SELECT p.campaign_id, c.owner_id FROM campaign_senders p
               JOIN campaigns c ON c.id = p.campaign_id AND c.status = ANY($2::text[])
               WHERE p.sender_id = $1 AND p.left_at IS NULL""",
            sender_id,
            list(_LIVE),
        )

    async def leave_rotation(self, campaign_id: int, sender_id: int, reason: str) -> bool:
        """Mark the sender out of the campaign's rotation; False if it was already out."""
        done = await self.pool.fetchval(
            """UPDATE campaign_senders SET left_at = now(), left_reason = $3
               WHERE campaign_id = $1 AND sender_id = $2 AND left_at IS NULL RETURNING true""",
            campaign_id,
            sender_id,
            reason[:500],
        )
        return bool(done)

    async def pools_with_leavers(self) -> list[asyncpg.Record]:
        """(campaign, owner, status, sender) of senders out of a live rotation that still
        hold queued emails of it: the moves still to make (so a crash midway is finished)."""
        return await self.pool.fetch(
            """SELECT p.campaign_id, c.owner_id, c.status, p.sender_id FROM campaign_senders p
               JOIN campaigns c ON c.id = p.campaign_id AND c.status = ANY($1::text[])
               WHERE p.left_at IS NOT NULL AND EXISTS (
                   SELECT 1 FROM dispatches d WHERE d.campaign_id = p.campaign_id
                     AND d.sender_id = p.sender_id AND d.status = ANY($2::text[]))""",
            list(_LIVE),
            list(_QUEUED),
        )

    async def rotation_of(self, campaign_id: int) -> list[int]:
        """The senders still in the campaign's rotation (not left, not parked), in order."""
        rows = await self.pool.fetch(
            """SELECT p.sender_id FROM campaign_senders p JOIN senders s ON s.id = p.sender_id
               WHERE p.campaign_id = $1 AND p.left_at IS NULL AND s.parked_reason IS NULL
               ORDER BY p.position""",
            campaign_id,
        )
        return [r["sender_id"] for r in rows]

    async def queued_on(
        self, campaign_id: int, sender_id: int, after_id: int, limit: int
    ) -> list[int]:
        rows = await self.pool.fetch(
            """SELECT id FROM dispatches WHERE campaign_id = $1 AND sender_id = $2
                 AND status = ANY($3::text[]) AND id > $4 ORDER BY id LIMIT $5""",
            campaign_id,
            sender_id,
            list(_QUEUED),
            after_id,
            limit,
        )
        return [r["id"] for r in rows]

    async def move_dispatches(
        self, campaign_id: int, owner_id: int, old: int, ids: Sequence[int], new: Sequence[int]
    ) -> list[asyncpg.Record]:
        """Give the queued `ids` (of `old`, in the campaign) their new senders, each guarded by
        its status and sender, so an email an attempt has begun meanwhile stays; the
        receiving senders must be the campaign's pool (joined, not trusted). Returns (id,
        sender_id, scheduled_at) of those moved, counted on the leaving sender's row."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """UPDATE dispatches d SET sender_id = t.sender, updated_at = now()
                   FROM unnest($4::bigint[], $5::bigint[]) AS t(id, sender)
                   JOIN campaign_senders p ON p.campaign_id = $1 AND p.sender_id = t.sender
                   WHERE d.id = t.id AND d.campaign_id = $1 AND d.owner_id = $2
                     AND d.sender_id = $3 AND d.status = ANY($6::text[])
                   RETURNING d.id, d.sender_id, d.scheduled_at""",
                campaign_id,
                owner_id,
                old,
                list(ids),
                list(new),
                list(_QUEUED),
            )
            if rows:
                await conn.execute(
                    """UPDATE campaign_senders SET moved = moved + $3
                       WHERE campaign_id = $1 AND sender_id = $2""",
                    campaign_id,
                    old,
                    len(rows),
                )
            return rows

    async def queued_elsewhere(self, ids: Sequence[int]) -> list[asyncpg.Record]:
        """(id, sender_id, scheduled_at) of those of `ids` still queued in a sending campaign:
        where a lease of another sender must hand them (a move raced its claim)."""
        return await self.pool.fetch(
            """SELECT d.id, d.sender_id, d.scheduled_at FROM dispatches d
               JOIN campaigns c ON c.id = d.campaign_id
               WHERE d.id = ANY($1::bigint[]) AND d.status = ANY($2::text[])
                 AND c.status IN ('scheduled', 'running')""",
            list(ids),
            list(_QUEUED),
        )
