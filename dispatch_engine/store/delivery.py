"""The worker's path (load, begin, record) and recovery's walk over queued dispatches."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ..models import (
    CampaignStatus,
    DispatchJob,
    DispatchStatus,
)
from .base import Queries, SendOutcome


class DeliveryQueries(Queries):
    async def load_jobs(self, ids: Sequence[int]) -> list[DispatchJob]:
        rows = await self.pool.fetch(
            """SELECT d.id, d.campaign_id, d.sender_id, d.owner_id, d.recipient, d.vars,
                      d.status, c.status AS campaign_status, d.idempotency_key, d.attempts,
                      d.scheduled_at, coalesce(d.step, 0) AS step, f.message_id AS thread_message_id
               FROM dispatches d JOIN campaigns c ON c.id = d.campaign_id
               LEFT JOIN dispatches f ON f.id = d.first_id  -- a follow-up's first step
               WHERE d.id = ANY($1::bigint[])""",
            ids,
        )
        return [
            DispatchJob(
                r["id"],
                r["campaign_id"],
                r["sender_id"],
                r["owner_id"],
                r["recipient"],
                r["vars"],
                DispatchStatus(r["status"]),
                CampaignStatus(r["campaign_status"]),
                r["idempotency_key"],
                r["attempts"],
                r["scheduled_at"],
                r["step"],
                r["thread_message_id"],
            )
            for r in rows
        ]

    async def begin_sends(
        self,
        ids: Sequence[int],
        message_ids: Sequence[str],
        transports: Sequence[str],
        attempt_token: str,
        sender_ids: Sequence[int] | None = None,
    ) -> tuple[set[int], set[int]]:
        """Mark dispatches `sending` and write their ledger rows, in one statement.

        Returns (go, already_sent): ids to hand to the transport now, and ids whose ledger
        says a previous attempt was recorded as sent (they are only repaired and acked).
        A ledger row still `sending` belongs to an attempt that died; this one takes it over.
        `sender_ids`: the senders of the leases; a dispatch a pool moved to another sender
        since (pools/rotation.py) is not begun under a lease of its old one.
        """
        rows = await self.pool.fetch(
            """WITH input AS (
                   SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $5::bigint[])
                       AS t(id, mid, tr, sender)
               ), marked AS (
                   UPDATE dispatches d SET status = 'sending', attempts = d.attempts + 1,
                          updated_at = now()
                   FROM input WHERE d.id = input.id
                     AND d.status IN ('scheduled', 'rate_limited', 'sending')
                     AND (input.sender IS NULL OR d.sender_id = input.sender)
                   RETURNING d.id, d.idempotency_key, input.mid, input.tr
               ), led AS (
                   INSERT INTO ledger (idempotency_key, dispatch_id, state, attempt_token,
                                       transport, message_id)
                   SELECT idempotency_key, id, 'sending', $4, tr, mid FROM marked
                   ON CONFLICT (idempotency_key) DO UPDATE
                       SET attempt_token = EXCLUDED.attempt_token, at = now()
                       WHERE ledger.state = 'sending'
                   RETURNING dispatch_id
               )
               SELECT m.id, (l.dispatch_id IS NOT NULL) AS go
               FROM marked m LEFT JOIN led l ON l.dispatch_id = m.id""",
            ids,
            message_ids,
            transports,
            attempt_token,
            list(sender_ids) if sender_ids is not None else [None] * len(ids),
        )
        go = {r["id"] for r in rows if r["go"]}
        return go, {r["id"] for r in rows if not r["go"]}

    async def record_outcomes(self, outcomes: Sequence[SendOutcome]) -> None:
        """Group commit: one statement (so one atomic transaction) records a whole batch.

        Sent: ledger and dispatch both `sent`. Failed: the reason. Retry: back to
        `scheduled` at its new time. Each guarded by `status = 'sending'`.
        """
        await self.pool.execute(
            """WITH input AS (
                   SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::text[], $4::text[],
                                        $5::text[], $6::text[], $7::timestamptz[],
                                        $8::text[])
                       AS t(id, k, status, mid, response, error, retry_at, wait_reason)
               ), led AS (
                   UPDATE ledger SET state = 'sent', response = input.response, at = now()
                   FROM input WHERE input.status = 'sent' AND ledger.idempotency_key = input.k
               )
               UPDATE dispatches d SET
                   status = input.status,
                   message_id = CASE WHEN input.status = 'sent' THEN input.mid
                                     ELSE d.message_id END,
                   sent_at = CASE WHEN input.status = 'sent' THEN now() ELSE d.sent_at END,
                   finished_at = CASE WHEN input.status = 'scheduled' THEN NULL ELSE now() END,
                   last_error = CASE WHEN input.status = 'sent' THEN NULL ELSE input.error END,
                   scheduled_at = COALESCE(input.retry_at, d.scheduled_at),
                   wait_reason = input.wait_reason,
                   updated_at = now()
               FROM input WHERE d.id = input.id AND d.status = 'sending'""",
            [o.dispatch_id for o in outcomes],
            [o.idempotency_key for o in outcomes],
            [o.status.value for o in outcomes],
            [o.message_id for o in outcomes],
            [o.response[:1000] for o in outcomes],
            [o.error or "" for o in outcomes],
            [o.retry_at if o.status == DispatchStatus.SCHEDULED else None for o in outcomes],
            [o.wait_reason for o in outcomes],
        )

    async def repair_sent(self, ids: Sequence[int]) -> None:
        """A ledger row says sent but the dispatch does not (a crash between the two)."""
        await self.pool.execute(
            """UPDATE dispatches d SET status = 'sent', message_id = l.message_id,
                      sent_at = l.at, finished_at = l.at, updated_at = now()
               FROM ledger l WHERE l.dispatch_id = d.id AND d.id = ANY($1::bigint[])
                 AND l.state = 'sent' AND d.status <> 'sent'""",
            ids,
        )

    async def mark_waiting(self, ids: Sequence[int], reason: str, until_ms: int) -> None:
        """Pacing holds these back: `rate_limited`, with why (a WaitReason) and until when."""
        await self.pool.execute(
            """UPDATE dispatches SET status = 'rate_limited', wait_reason = $2,
                      wait_until = to_timestamp($3::float8 / 1000), updated_at = now()
               WHERE id = ANY($1::bigint[]) AND status IN ('scheduled', 'rate_limited')""",
            ids,
            str(reason),
            until_ms,
        )

    async def fail_dispatches(self, ids: Sequence[int], reason: str) -> None:
        await self.pool.execute(
            """UPDATE dispatches SET status = 'failed', last_error = $2, finished_at = now(),
                      updated_at = now()
               WHERE id = ANY($1::bigint[])
                 AND status IN ('scheduled', 'sending', 'rate_limited')""",
            ids,
            reason,
        )

    async def suppress_dispatches(self, errors: dict[int, str]) -> list[int]:
        """End queued dispatches `suppressed` (their address was suppressed since they were
        scheduled), each with its reason; returns the ids that were still queued."""
        rows = await self.pool.fetch(
            """UPDATE dispatches d SET status = 'suppressed', last_error = e.error,
                      finished_at = now(), updated_at = now()
               FROM unnest($1::bigint[], $2::text[]) AS e(id, error)
               WHERE d.id = e.id AND d.status IN ('scheduled', 'sending', 'rate_limited')
               RETURNING d.id""",
            list(errors),
            list(errors.values()),
        )
        return [r["id"] for r in rows]

    async def update_campaign_progress(
        self, campaign_ids: Sequence[int]
    ) -> list[tuple[int, int, CampaignStatus]]:
        """Mark campaigns running or completed; returns (id, owner, status) of those that changed.

        The status guard makes each flip happen once, whichever process wins.
        """
        rows = await self.pool.fetch(
            """WITH old AS (
                   SELECT id, status FROM campaigns
                   WHERE id = ANY($1::bigint[]) AND status IN ('scheduled', 'running')
                   FOR UPDATE)
               UPDATE campaigns c SET status = CASE
                   WHEN NOT EXISTS (SELECT 1 FROM dispatches d WHERE d.campaign_id = c.id
                                    AND d.status IN ('scheduled', 'sending', 'rate_limited'))
                    -- a sequence's recipients waiting for their next step (migration 0018)
                    AND NOT EXISTS (SELECT 1 FROM sequence_members m
                                    WHERE m.campaign_id = c.id AND m.state = 'waiting')
                   THEN 'completed' ELSE 'running' END,
                   updated_at = now()
               FROM old WHERE c.id = old.id
               RETURNING c.id, c.owner_id, c.status, old.status AS was""",
            campaign_ids,
        )
        return [
            (r["id"], r["owner_id"], CampaignStatus(r["status"]))
            for r in rows
            if r["status"] != r["was"]
        ]

    async def queued_after(
        self, after_id: int, limit: int, campaign_id: int | None = None
    ) -> list[asyncpg.Record]:
        """Queued dispatches of live campaigns in id order, for re-adding to Redis in batches."""
        return await self.pool.fetch(
            """SELECT d.id, d.sender_id, d.scheduled_at, c.delay_between_ms, s.min_gap_ms,
                      s.hourly_limit AS sender_limit, c.hourly_limit AS campaign_limit
               FROM dispatches d
               JOIN campaigns c ON c.id = d.campaign_id
               JOIN senders s ON s.id = d.sender_id
               WHERE d.status IN ('scheduled', 'sending', 'rate_limited') AND d.id > $1
                 AND c.status IN ('scheduled', 'running')
                 AND ($3::bigint IS NULL OR d.campaign_id = $3)
               ORDER BY d.id LIMIT $2""",
            after_id,
            limit,
            campaign_id,
        )

    async def queued_of_campaign(self, campaign_id: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT id, sender_id FROM dispatches
               WHERE campaign_id = $1 AND status IN ('scheduled', 'rate_limited')""",
            campaign_id,
        )
