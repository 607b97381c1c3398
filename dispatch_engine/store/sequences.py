"""Sequences: the steps of a campaign, each recipient's place in them, and the sequencer's
batch that makes the next step's dispatches (migration 0018, docs/sequences.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from ..db import Conn
from ..models import StepContent
from .base import NewDispatch, Queries

if TYPE_CHECKING:
    from ..sequences.steps import StepRequest

MEMBER_STATES = ("active", "waiting", "replied", "finished", "stopped")
LIVE = ("active", "waiting")  # states a stop applies to

# The member of a dispatch (any step's): its campaign and its first step's dispatch.
_MEMBER_OF = "m.campaign_id = d.campaign_id AND m.first_dispatch_id = coalesce(d.first_id, d.id)"


class SequenceQueries(Queries):
    async def create_sequence(
        self,
        conn: Conn,
        campaign_id: int,
        steps: Sequence[StepRequest],
        rows: Sequence[NewDispatch],
        day_seconds: int,
    ) -> None:
        """The steps, and one `active` member per recipient (a COPY), in the schedule's
        transaction."""
        await conn.executemany(
            """INSERT INTO campaign_steps (campaign_id, step, wait_days, business_days,
                   day_seconds, subject, body_text, body_html)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            [
                (campaign_id, s.step, s.after_days, s.business_days, day_seconds, s.subject,
                 s.body, s.html)
                for s in steps
            ],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "sequence_members",
            columns=["campaign_id", "first_dispatch_id", "dispatch_id", "recipient"],
            records=((campaign_id, d.id, d.id, d.recipient) for d in rows),
        )

    async def steps_of(self, campaign_ids: Sequence[int]) -> dict[int, tuple[StepContent, ...]]:
        rows = await self.pool.fetch(
            """SELECT campaign_id, step, subject, body_text, body_html FROM campaign_steps
               WHERE campaign_id = ANY($1::bigint[]) ORDER BY campaign_id, step""",
            list(campaign_ids),
        )
        out: dict[int, list[StepContent]] = {}
        for r in rows:
            out.setdefault(r["campaign_id"], []).append(
                StepContent(r["step"], r["subject"], r["body_text"], r["body_html"])
            )
        return {cid: tuple(steps) for cid, steps in out.items()}

    async def sequence_summary(self, campaign_id: int) -> dict[str, Any] | None:
        """The steps (without their bodies) and the members counted by state; None: no steps."""
        steps = await self.pool.fetch(
            """SELECT step, wait_days, business_days, subject FROM campaign_steps
               WHERE campaign_id = $1 ORDER BY step""",
            campaign_id,
        )
        if not steps:
            return None
        counts = {state: 0 for state in MEMBER_STATES}
        to_make = 0  # follow-ups of live members not made yet: part of the progress bar
        for r in await self.pool.fetch(
            """SELECT state, count(*) AS n, sum($2 - step) AS left FROM sequence_members
               WHERE campaign_id = $1 GROUP BY state""",
            campaign_id,
            len(steps),
        ):
            counts[r["state"]] = r["n"]
            to_make += int(r["left"]) if r["state"] in LIVE else 0
        return {"steps": [dict(r) for r in steps], "members": counts, "to_make": to_make}

    async def list_members(
        self, campaign_id: int, limit: int, after: int | None, state: str | None
    ) -> list[asyncpg.Record]:
        """A page of a campaign's members in recipient order (keyset on the first dispatch)."""
        return await self.pool.fetch(
            """SELECT first_dispatch_id AS id, recipient, step, state, stop_reason,
                      next_due_at, dispatch_id, updated_at
               FROM sequence_members
               WHERE campaign_id = $1 AND ($3::bigint IS NULL OR first_dispatch_id > $3)
                 AND ($4::text IS NULL OR state = $4)
               ORDER BY first_dispatch_id LIMIT $2""",
            campaign_id,
            limit,
            after,
            state,
        )

    async def stop_member(
        self, campaign_id: int, recipient: str, reason: str
    ) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
        """Stop one recipient's sequence by hand: (its member, or None when it has none;
        the (id, sender_id) of its step's dispatch cancelled here, to take out of Redis)."""
        async with self.pool.acquire() as conn, conn.transaction():
            member = await conn.fetchrow(
                """SELECT first_dispatch_id, state, dispatch_id FROM sequence_members
                   WHERE campaign_id = $1 AND lower(recipient) = lower($2) FOR UPDATE""",
                campaign_id,
                recipient,
            )
            if member is None or member["state"] not in LIVE:
                return member, []
            await conn.execute(
                """UPDATE sequence_members SET state = 'stopped', stop_reason = $3,
                          next_due_at = NULL, updated_at = now()
                   WHERE campaign_id = $1 AND first_dispatch_id = $2""",
                campaign_id,
                member["first_dispatch_id"],
                reason,
            )
            cancelled = await conn.fetch(
                """UPDATE dispatches SET status = 'cancelled', finished_at = now(),
                          updated_at = now()
                   WHERE id = $1 AND status IN ('scheduled', 'rate_limited')
                   RETURNING id, sender_id""",
                member["dispatch_id"],
            )
            return member, cancelled

    async def stop_sequence_of(self, conn: Conn, dispatch_id: int, reason: str) -> bool:
        """A report (reply, unsubscribe, bounce, complaint) on any step's dispatch stops its
        recipient's sequence: one UPDATE; a step already queued is cancelled with it (the
        worker drops a cancelled id it claims). False: no live sequence to stop."""
        state = "replied" if reason == "replied" else "stopped"
        pending = await conn.fetchval(
            f"""UPDATE sequence_members m SET state = $2, stop_reason = $3,
                       next_due_at = NULL, updated_at = now()
                FROM dispatches d WHERE d.id = $1 AND {_MEMBER_OF}
                  AND m.state IN ('active', 'waiting')
                RETURNING m.dispatch_id""",
            dispatch_id,
            state,
            reason,
        )
        if pending is None:
            return False
        await conn.execute(
            """UPDATE dispatches SET status = 'cancelled', finished_at = now(), updated_at = now()
               WHERE id = $1 AND status IN ('scheduled', 'rate_limited')""",
            pending,
        )
        return True

    async def stop_campaign_members(self, campaign_id: int, reason: str) -> None:
        """A cancelled campaign: the members waiting for a step stop (queued ones are
        cancelled with their dispatch, by the trigger)."""
        await self.pool.execute(
            """UPDATE sequence_members SET state = 'stopped', stop_reason = $2,
                      next_due_at = NULL, updated_at = now()
               WHERE campaign_id = $1 AND state = 'waiting'""",
            campaign_id,
            reason,
        )

    async def make_due_steps(self, limit: int) -> list[asyncpg.Record]:
        """The sequencer's batch, in one transaction: the next step's dispatch of up to `limit`
        members whose wait has passed (same sender, recipient and variables as the previous
        step; the key is SHA-256 of the first key and the step, so a re-run makes none twice),
        the members `active` on it, their campaigns marked not enqueued (the outbox: the
        sweeper re-queues them should this process die before Redis has them). Returns what
        to enqueue: id, sender_id, scheduled_at and the claim cap's inputs."""
        async with self.pool.acquire() as conn, conn.transaction():
            due = await conn.fetch(
                """WITH due AS (
                       SELECT m.campaign_id, m.first_dispatch_id, m.step + 1 AS step,
                              m.next_due_at, d.owner_id, d.sender_id, d.recipient, d.vars,
                              sha256(f.idempotency_key
                                     || convert_to('step ' || (m.step + 1), 'UTF8')) AS key
                       FROM sequence_members m
                       JOIN campaigns c ON c.id = m.campaign_id
                       JOIN dispatches d ON d.id = m.dispatch_id
                       JOIN dispatches f ON f.id = m.first_dispatch_id
                       WHERE m.state = 'waiting' AND m.next_due_at <= now()
                         AND c.status IN ('scheduled', 'running')
                       ORDER BY m.next_due_at LIMIT $1
                       FOR UPDATE OF m SKIP LOCKED
                   ), made AS (
                       INSERT INTO dispatches (id, campaign_id, owner_id, sender_id, recipient,
                                               vars, scheduled_at, idempotency_key, step,
                                               first_id)
                       SELECT nextval('dispatches_id_seq'), campaign_id, owner_id, sender_id,
                              recipient, vars, next_due_at, key, step, first_dispatch_id
                       FROM due
                       ON CONFLICT (idempotency_key) DO NOTHING
                   )
                   SELECT key, campaign_id FROM due""",
                limit,
            )
            if not due:
                return []
            keys = [r["key"] for r in due]
            await conn.execute(
                """UPDATE sequence_members m SET state = 'active', step = d.step,
                          dispatch_id = d.id, next_due_at = NULL, updated_at = now()
                   FROM dispatches d WHERE d.idempotency_key = ANY($1::bytea[])
                     AND m.campaign_id = d.campaign_id AND m.first_dispatch_id = d.first_id
                     AND m.state = 'waiting'""",
                keys,
            )
            await conn.execute(
                "UPDATE campaigns SET enqueued_at = NULL WHERE id = ANY($1::bigint[])",
                list({r["campaign_id"] for r in due}),
            )
            return await conn.fetch(
                """SELECT d.id, d.campaign_id, d.sender_id, d.scheduled_at,
                          c.delay_between_ms, s.min_gap_ms, s.hourly_limit AS sender_limit
                   FROM dispatches d JOIN campaigns c ON c.id = d.campaign_id
                   JOIN senders s ON s.id = d.sender_id
                   WHERE d.idempotency_key = ANY($1::bytea[])
                     AND d.status IN ('scheduled', 'rate_limited')""",
                keys,
            )

    async def next_step_due_in(self) -> float | None:
        """Seconds (on PostgreSQL's clock, the one `make_due_steps` compares with) until the
        earliest waiting member of a live campaign is due; None: none waits."""
        due = await self.pool.fetchval(
            """SELECT extract(epoch FROM m.next_due_at - now())::float8
               FROM sequence_members m JOIN campaigns c ON c.id = m.campaign_id
               WHERE m.state = 'waiting' AND c.status IN ('scheduled', 'running')
               ORDER BY m.next_due_at LIMIT 1"""
        )
        return None if due is None else float(due)

    async def owns_campaign(self, owner_id: int, campaign_id: int) -> bool:
        return bool(
            await self.pool.fetchval(
                "SELECT true FROM campaigns WHERE owner_id = $1 AND id = $2", owner_id, campaign_id
            )
        )
