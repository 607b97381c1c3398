"""Leaving the rotation: a pool's sender that is parked for refused logins
(worker/sender_health.py) or whose hard-bounce or complaint rate passed its threshold
(DISPATCH_PAUSE_BOUNCE_PERCENT / DISPATCH_PAUSE_COMPLAINT_PERCENT, the feedback policy's
numbers) leaves the rotation of each live pool it is in, and its queued emails of those
campaigns move to the senders still in it, by their capacity.

One process runs it: the sweeper's leader, each pass. It is idempotent: PostgreSQL says who
left (`campaign_senders.left_at`) and which emails are still on a sender that left, so a
pass that died midway is finished by the next. A move is, per batch:
1. the queued rows of the leaving sender (status `scheduled` / `rate_limited`);
2. less those leased now (an attempt holds them; they come back to the sender's queue, or
   are sent, and the next pass moves what came back);
3. one UPDATE gives each its new sender, guarded by status and old sender;
4. the queue's own scripts take them out of the old sender's queue (`remove`) and add them
   to the new ones' (`enqueue`).
A claim that raced the move is caught by the worker (`rehome`): a lease whose sender is no
longer the dispatch's sends nothing and hands the id to the right queue, and the ledger's
begin only starts a dispatch for a lease of its own sender, so none is sent twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ..config import Settings
from ..consent.settings import ConsentSettings
from ..models import Sender
from ..pacing import claim_cap
from ..queue import RedisQueue, member
from ..setting import settings_of
from ..store import Store
from .capacity import PacingFrame, interleave, split
from .request import taken_now

log = logging.getLogger("dispatch_engine.pools")

MOVE_BATCH = 1000
RATE_DAYS = 30  # a sender's rates look this far back (as /api/stats' sender feedback)


def rate_reason(sent: int, bounced: int, complained: int, consent: ConsentSettings) -> str | None:
    """Why a sender with these 30-day numbers must leave its rotations, or None: the feedback
    policy's test (exact, no float rounding at the threshold), from its minimum of sends."""
    if sent < consent.pause_min_sent:
        return None
    for count, limit, what, variable in (
        (bounced, consent.pause_bounce_percent, "hard-bounce", "BOUNCE"),
        (complained, consent.pause_complaint_percent, "complaint", "COMPLAINT"),
    ):
        if count * 100 > limit * sent:
            return (
                f"{what} rate {100 * count / sent:.1f} % ({count} of {sent} sent in "
                f"{RATE_DAYS} days) is over {limit:g} % (DISPATCH_PAUSE_{variable}_PERCENT)"
            )
    return None


async def rehome(queue: RedisQueue, rows: Iterable[Any]) -> int:
    """Queue (id, sender_id, scheduled_at) rows on their own sender's queue: ids a lease of
    another sender held when a move gave them a new one (its lease is settled first)."""
    by_sender: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for r in rows:
        by_sender[r["sender_id"]].append((r["id"], int(r["scheduled_at"].timestamp() * 1000)))
    added = 0
    for sender_id, items in by_sender.items():
        added += await queue.enqueue(sender_id, items)
    return added


class Rotation:
    def __init__(self, store: Store, queue: RedisQueue, settings: Settings) -> None:
        self.store = store
        self.queue = queue
        self.settings = settings
        self.consent = settings_of(ConsentSettings, settings)
        self._after_event = 0  # feedback events looked at (0 at start: every one once)

    async def run(self) -> int:
        """One pass: who leaves now, then every move still to make. Returns emails moved."""
        for r in await self.store.parked_pool_members():
            await self._leave(r["campaign_id"], r["sender_id"], f"parked: {r['reason']}")
        rated, last = await self.store.rated_pool_senders(self._after_event)
        since = datetime.now(UTC) - timedelta(days=RATE_DAYS)
        for r in rated:
            numbers = await self.store.sender_rates(r["owner_id"], r["sender_id"], since)
            reason = rate_reason(*numbers, self.consent)
            if reason is not None:
                for pool in await self.store.live_pools_of(r["sender_id"]):
                    await self._leave(pool["campaign_id"], r["sender_id"], reason)
        self._after_event = last
        moved = 0
        for row in await self.store.pools_with_leavers():
            moved += await self.move(
                row["campaign_id"],
                row["owner_id"],
                row["sender_id"],
                queue=row["status"] != "paused",
            )
        return moved

    async def _leave(self, campaign_id: int, sender_id: int, reason: str) -> None:
        if await self.store.leave_rotation(campaign_id, sender_id, reason):
            log.warning(
                "sender %d left the rotation of campaign %d: %s", sender_id, campaign_id, reason
            )

    async def move(self, campaign_id: int, owner_id: int, old: int, *, queue: bool) -> int:
        """Move the campaign's queued emails of `old` to the senders still in its rotation
        (none left: they wait on their sender, as a campaign of one sender would)."""
        rotation = await self.store.rotation_of(campaign_id)
        found = await self.store.senders_by_id(rotation)
        senders = [found[s] for s in rotation if s in found and s != old]
        contents = await self.store.campaign_contents([campaign_id])
        content = contents.get(campaign_id)
        if not senders or content is None:
            return 0
        moved, after = 0, 0
        while True:
            ids = await self.store.queued_on(campaign_id, old, after, MOVE_BATCH)
            if not ids:
                return moved
            after = ids[-1]
            free = await self._not_leased(old, ids)
            if free:
                moved += await self._move_batch(content, owner_id, old, free, senders, queue)
            if len(ids) < MOVE_BATCH:
                return moved

    async def _not_leased(self, sender_id: int, ids: Sequence[int]) -> list[int]:
        leases = await self.queue.redis.hmget(
            self.queue.shard_of(sender_id).key("lease"), [member(i) for i in ids]
        )
        return [i for i, lease in zip(ids, leases, strict=True) if lease is None]

    async def _move_batch(
        self,
        content: Any,
        owner_id: int,
        old: int,
        ids: list[int],
        senders: list[Sender],
        queue: bool,
    ) -> int:
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        day_ms = self.settings.day_seconds * 1000
        frame = PacingFrame(
            now_ms,
            day_ms,
            self.settings.rate_window_seconds * 1000,
            content.delay_between_ms,
            content.hourly_limit,
            content.daily_limit,
        )
        taken = [await taken_now(self.queue, s, now_ms, day_ms) for s in senders]
        counts = split(len(ids), senders, frame, taken)
        if counts is None:
            return 0
        new = [senders[i].id for i in interleave(counts)]
        rows = await self.store.move_dispatches(content.id, owner_id, old, ids, new)
        if rows and queue:
            await self.queue.remove(old, [r["id"] for r in rows])
            caps = {
                s.id: claim_cap(s.hourly_limit, max(s.min_gap_ms, content.delay_between_ms))
                for s in senders
            }
            by_sender: dict[int, list[tuple[int, int]]] = defaultdict(list)
            for r in rows:
                due = int(r["scheduled_at"].timestamp() * 1000)
                by_sender[r["sender_id"]].append((r["id"], due))
            for sender_id, items in by_sender.items():
                await self.queue.enqueue(sender_id, items, claim_cap=caps[sender_id])
        if rows:
            log.info("moved %d emails of campaign %d off sender %d", len(rows), content.id, old)
        return len(rows)
