"""Campaigns: creation (COPY of their dispatches), details, controls, the outbox marker."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from ..db import Conn
from ..models import (
    CampaignContent,
    CampaignStatus,
    DispatchStatus,
    StepContent,
)
from ..recipient_hours import SendWindow
from .base import NewDispatch
from .policy import campaign_feedback
from .pools import pool_of
from .sequences import SequenceQueries

if TYPE_CHECKING:
    from ..sequences.steps import StepRequest


def content_from(row: asyncpg.Record, steps: tuple[StepContent, ...] = ()) -> CampaignContent:
    fields = dict(row)
    text, zone, holidays = fields.pop("send_window"), fields.pop("timezone"), fields.pop("holidays")
    window = SendWindow(text, zone, tuple(holidays)).window() if text else None
    return CampaignContent(**fields, send_window=window, steps=steps)


class CampaignQueries(SequenceQueries):  # a campaign's details include its sequence
    async def campaign_by_idempotency_key(self, owner_id: int, key: str) -> int | None:
        value = await self.pool.fetchval(
            "SELECT id FROM campaigns WHERE owner_id = $1 AND idempotency_key = $2", owner_id, key
        )
        return int(value) if value is not None else None

    async def reserve_dispatch_ids(self, count: int) -> list[int]:
        # One array, not a row per id: 100,000 rows cost ~100 ms to decode, the array ~5 ms.
        ids: list[int] = await self.pool.fetchval(
            "SELECT array_agg(nextval('dispatches_id_seq')) FROM generate_series(1, $1)", count
        )
        return ids

    async def create_campaign(
        self,
        conn: Conn,
        *,
        owner_id: int,
        sender_id: int,
        subject: str,
        body_text: str,
        body_html: str | None,
        start_at: datetime,
        delay_between_ms: int,
        hourly_limit: int | None,
        total: int,
        idempotency_key: str | None,
        daily_limit: int | None = None,
        delay_jitter_ms: int = 0,
        name: str | None = None,
        first_subject: str | None = None,
        send_window: SendWindow | None = None,
    ) -> int:
        """Insert the campaign row (inside the caller's transaction); None when the key exists."""
        value = await conn.fetchval(
            """INSERT INTO campaigns (owner_id, sender_id, subject, body_text, body_html,
                   start_at, delay_between_ms, hourly_limit, total, idempotency_key,
                   daily_limit, delay_jitter_ms, send_window, timezone, holidays, name,
                   first_subject)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                       coalesce($15, '{}'::date[]), $16, $17)
               RETURNING id""",
            owner_id,
            sender_id,
            subject,
            body_text,
            body_html,
            start_at,
            delay_between_ms,
            hourly_limit,
            total,
            idempotency_key,
            daily_limit,
            delay_jitter_ms,
            send_window.text if send_window else None,
            send_window.timezone if send_window else None,
            list(send_window.holidays) if send_window else None,
            name,
            first_subject,
        )
        return int(value)

    async def copy_dispatches(
        self,
        conn: Conn,
        *,
        campaign_id: int,
        owner_id: int,
        sender_id: int,
        rows: Sequence[NewDispatch],
        senders: Sequence[int] | None = None,  # a pool's: each row's sender (pools/)
        steps: Sequence[StepRequest] = (),
        day_seconds: int = 86_400,
    ) -> None:
        """With `steps`: the dispatches are a sequence's first step (`step` 0), and the steps
        and each recipient's member are written too (store/sequences.py, migration 0018)."""
        columns = [
            "id",
            "campaign_id",
            "owner_id",
            "sender_id",
            "recipient",
            "vars",
            "scheduled_at",
            "idempotency_key",
        ]
        records: Any = (
            (
                d.id,
                campaign_id,
                owner_id,
                sender_id if senders is None else senders[n],
                d.recipient,
                d.vars,
                d.scheduled_at,
                d.idempotency_key,
            )
            for n, d in enumerate(rows)
        )
        if steps:
            columns.append("step")
            records = ((*r, 0) for r in records)
        await conn.copy_records_to_table("dispatches", columns=columns, records=records)
        if steps:
            await self.create_sequence(conn, campaign_id, steps, rows, day_seconds)

    async def campaign_detail(self, owner_id: int, campaign_id: int) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            """SELECT c.*, s.from_address FROM campaigns c JOIN senders s ON s.id = c.sender_id
               WHERE c.owner_id = $1 AND c.id = $2""",
            owner_id,
            campaign_id,
        )
        if row is None:
            return None
        counts = {s.value: 0 for s in DispatchStatus}
        for r in await self.pool.fetch(
            "SELECT status, count(*) AS n FROM dispatches WHERE campaign_id = $1 GROUP BY status",
            campaign_id,
        ):
            counts[r["status"]] = r["n"]
        detail = dict(row)
        detail["counts"] = counts
        detail["pool"] = await pool_of(self.pool, campaign_id)  # store/pools.py: [] without one
        detail["feedback"] = await campaign_feedback(self.pool, campaign_id)
        detail["sequence"] = sequence = await self.sequence_summary(campaign_id)
        # The emails the campaign sends: a sequence's follow-ups too (made or still to make).
        detail["emails"] = sum(counts.values()) + sequence["to_make"] if sequence else None
        return detail

    async def campaign_waiting(self, campaign_id: int) -> list[asyncpg.Record]:
        """The campaign's queued emails by why they wait (NULL: due now): reason, n, until."""
        return await self.pool.fetch(
            """SELECT CASE WHEN wait_reason = 'auth_failure' THEN wait_reason
                        WHEN status = 'rate_limited' AND wait_until > now() THEN wait_reason
                        WHEN scheduled_at > now() THEN 'scheduled' END AS reason,
                      count(*) AS n,
                      max(CASE WHEN status = 'rate_limited' AND wait_until > now()
                               THEN wait_until ELSE scheduled_at END) AS until
               FROM dispatches WHERE campaign_id = $1 AND status IN ('scheduled', 'rate_limited')
               GROUP BY 1 ORDER BY 1""",
            campaign_id,
        )

    async def campaign_contents(self, ids: Sequence[int]) -> dict[int, CampaignContent]:
        rows = await self.pool.fetch(
            """SELECT id, owner_id, sender_id, subject, body_text, body_html, delay_between_ms,
                      hourly_limit, daily_limit, delay_jitter_ms, send_window, timezone,
                      holidays
               FROM campaigns WHERE id = ANY($1::bigint[])""",
            ids,
        )
        steps = await self.steps_of(ids)
        return {r["id"]: content_from(r, steps.get(r["id"], ())) for r in rows}

    async def list_campaigns(
        self, owner_id: int, limit: int, before_id: int | None
    ) -> list[asyncpg.Record]:
        """A page of campaigns, newest first, each with its counts by status (keyset on id)."""
        return await self.pool.fetch(
            """SELECT c.id, c.subject, c.status, c.total, c.start_at, c.created_at,
                      c.sender_id, s.from_address, k.counts, c.name, c.first_subject
               FROM campaigns c JOIN senders s ON s.id = c.sender_id
               LEFT JOIN LATERAL (
                   SELECT jsonb_object_agg(status, n) AS counts FROM (
                       SELECT status, count(*) AS n FROM dispatches d
                       WHERE d.campaign_id = c.id GROUP BY status
                   ) by_status
               ) k ON true
               WHERE c.owner_id = $1 AND ($3::bigint IS NULL OR c.id < $3)
               ORDER BY c.id DESC LIMIT $2""",
            owner_id,
            limit,
            before_id,
        )

    async def set_campaign_status(
        self,
        owner_id: int,
        campaign_id: int,
        to: CampaignStatus,
        allowed_from: Sequence[str],
        paused_reason: str | None = None,
    ) -> bool:
        """One guarded change. `paused_reason`: the campaign pauses itself (consent/policy.py);
        any other change clears it, and leaving such a pause restarts its rates' count."""
        done = await self.pool.fetchval(
            """UPDATE campaigns SET status = $3, updated_at = now(), paused_reason = $5,
                      rates_since = CASE WHEN paused_reason IS NOT NULL THEN now()
                                         ELSE rates_since END
               WHERE owner_id = $1 AND id = $2 AND status = ANY($4::text[]) RETURNING true""",
            owner_id,
            campaign_id,
            to.value,
            list(allowed_from),
            paused_reason,
        )
        return bool(done)

    async def cancel_dispatches(self, campaign_id: int) -> list[asyncpg.Record]:
        """Cancel what has not started; emails already handed to a transport finish."""
        await self.stop_campaign_members(campaign_id, "cancelled")  # those waiting for a step
        return await self.pool.fetch(
            """UPDATE dispatches SET status = 'cancelled', finished_at = now(),
                      updated_at = now()
               WHERE campaign_id = $1 AND status IN ('scheduled', 'rate_limited')
               RETURNING id, sender_id""",
            campaign_id,
        )

    async def mark_enqueued(self, campaign_id: int, enqueued: bool) -> None:
        """The outbox marker: NULL while a campaign's emails may be missing from Redis."""
        await self.pool.execute(
            "UPDATE campaigns SET enqueued_at = CASE WHEN $2 THEN now() END WHERE id = $1",
            campaign_id,
            enqueued,
        )

    async def campaigns_not_enqueued(self, older_than_s: float) -> list[int]:
        rows = await self.pool.fetch(
            """SELECT id FROM campaigns WHERE enqueued_at IS NULL
                 AND status IN ('scheduled', 'running')
                 AND updated_at < now() - make_interval(secs => $1)""",
            older_than_s,
        )
        return [r["id"] for r in rows]

    async def reset_failed(self, campaign_id: int) -> int:
        result = await self.pool.execute(
            """UPDATE dispatches SET status = 'scheduled', attempts = 0, finished_at = NULL,
                      scheduled_at = now(), updated_at = now()
               WHERE campaign_id = $1 AND status = 'failed'""",
            campaign_id,
        )
        return int(result.split()[-1])
