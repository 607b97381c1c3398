"""Put back into Redis what PostgreSQL says is queued: the queue rebuilt from the truth.

Used by recovery (`sweeper.py`: at start, after Redis lost its data, for a campaign its
process left unqueued) and by campaign controls (`campaigns.py`: resume, reschedule).
"""

from __future__ import annotations

from collections import defaultdict

from .pacing import claim_cap
from .queue import RedisQueue
from .store import Store

REQUEUE_BATCH = 5000


async def requeue(
    store: Store, queue: RedisQueue, *, campaign_id: int | None = None, batch: int = REQUEUE_BATCH
) -> int:
    """Re-add queued dispatches (all, or one campaign's) from PostgreSQL to Redis.

    Idempotent: ids already queued or leased are left alone, so it is safe at any time.
    """
    after, added = 0, 0
    while True:
        rows = await store.queued_after(after, batch, campaign_id)
        if not rows:
            return added
        by_sender: dict[int, list[tuple[int, int]]] = defaultdict(list)
        caps: dict[int, int] = {}
        for r in rows:
            by_sender[r["sender_id"]].append((r["id"], int(r["scheduled_at"].timestamp() * 1000)))
            gap = max(r["delay_between_ms"], r["min_gap_ms"])
            cap = claim_cap(r["sender_limit"], gap)
            caps[r["sender_id"]] = min(cap, caps.get(r["sender_id"], cap))
        for sender_id, items in by_sender.items():
            added += await queue.enqueue(sender_id, items, claim_cap=caps[sender_id])
        after = rows[-1]["id"]
