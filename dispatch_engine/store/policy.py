"""Feedback policy: a campaign's bounce and complaint rates, feedback counted per campaign and
per sender."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import asyncpg

from .base import Queries

# The feedback counted for people (reply and auto_reply are a sequence's business).
COUNTED = ("hard_bounce", "soft_bounce", "complaint", "unsubscribe")


class CampaignRates(NamedTuple):
    """What a campaign's auto-pause looks at, since its `rates_since`."""

    status: str
    sent: int  # sent so far: sent + bounced + complained
    bounced: int
    complained: int


async def campaign_feedback(pool: asyncpg.Pool, campaign_id: int) -> dict[str, int]:
    """Reports recorded about a campaign's emails, by kind (zero when none)."""
    rows = await pool.fetch(
        """SELECT kind, count(*) AS n FROM feedback_events
           WHERE campaign_id = $1 AND kind = ANY($2::text[]) GROUP BY kind""",
        campaign_id,
        list(COUNTED),
    )
    return {kind: 0 for kind in COUNTED} | {r["kind"]: r["n"] for r in rows}


class PolicyQueries(Queries):
    async def campaign_head(self, campaign_id: int) -> tuple[str, datetime | None] | None:
        """(status, rates_since) of a campaign: one primary-key read."""
        row = await self.pool.fetchrow(
            "SELECT status, rates_since FROM campaigns WHERE id = $1", campaign_id
        )
        return None if row is None else (row["status"], row["rates_since"])

    async def campaign_rates(self, campaign_id: int) -> CampaignRates | None:
        """Counted from the dispatches (the campaign_status index), not from the events: a
        bounce of an email sent before a resume is not counted after it."""
        row = await self.pool.fetchrow(
            """SELECT c.status,
                      count(d.id) AS sent,
                      count(d.id) FILTER (WHERE d.status = 'bounced') AS bounced,
                      count(d.id) FILTER (WHERE d.status = 'complained') AS complained
               FROM campaigns c
               LEFT JOIN dispatches d ON d.campaign_id = c.id
                    AND d.status IN ('sent', 'bounced', 'complained')
                    AND (c.rates_since IS NULL OR d.finished_at >= c.rates_since)
               WHERE c.id = $1 GROUP BY c.id""",
            campaign_id,
        )
        return None if row is None else CampaignRates(*row)

    async def campaign_feedback(self, campaign_id: int) -> dict[str, int]:
        return await campaign_feedback(self.pool, campaign_id)

    async def sender_feedback(self, owner_id: int, since: datetime) -> dict[int, dict[str, int]]:
        """Per sender of the owner since `since`: emails sent so far (finished then; the
        owner_finished index, whose WHERE this repeats) and reports by kind."""
        sent = await self.pool.fetch(
            """SELECT sender_id, count(*) AS n FROM dispatches
               WHERE owner_id = $1 AND finished_at >= $2
                 AND status IN ('sent', 'failed', 'suppressed', 'bounced', 'complained')
                 AND status IN ('sent', 'bounced', 'complained')
               GROUP BY sender_id""",
            owner_id,
            since,
        )
        events = await self.pool.fetch(
            """SELECT sender_id, kind, count(*) AS n FROM feedback_events
               WHERE owner_id = $1 AND occurred_at >= $2 AND kind = ANY($3::text[])
               GROUP BY sender_id, kind""",
            owner_id,
            since,
            list(COUNTED),
        )
        found: dict[int, dict[str, int]] = {}
        for r in sent:
            found.setdefault(r["sender_id"], {k: 0 for k in ("sent", *COUNTED)})["sent"] = r["n"]
        for r in events:
            found.setdefault(r["sender_id"], {k: 0 for k in ("sent", *COUNTED)})[r["kind"]] = r["n"]
        return found
