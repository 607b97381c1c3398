"""A campaign's pool as the API and the campaign page show it (store.pool_of's rows)."""

from __future__ import annotations

import time
from typing import Any

from ..queue import RedisQueue
from ..store import Store
from ..warmup import daily_limit_now

_QUEUED = ("scheduled", "sending", "rate_limited")
_SENT = ("sent", "bounced", "complained")


def left_line(from_address: str, reason: str, moved: int) -> str:
    """What the campaign says of a sender that left its rotation."""
    return f"sender {from_address} left the rotation: {reason}; {moved} recipients moved"


def pool_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each sender of the pool in order: its emails of the campaign (queued, sent, by
    status), whether it is still in the rotation, and why not."""
    out = []
    for r in rows:
        counts = r["counts"]
        left = r["left_at"]
        out.append(
            {
                "id": r["sender_id"],
                "from_address": r["from_address"],
                "assigned": r["assigned"],  # at schedule time, by capacity
                "queued": sum(counts.get(s, 0) for s in _QUEUED),
                "sent": sum(counts.get(s, 0) for s in _SENT),
                "counts": counts,
                "in_rotation": left is None and r["parked_reason"] is None,
                "today": r.get("today"),  # its capacity today (add_today), all campaigns
                "left": None
                if left is None
                else {
                    "at": left.isoformat(),
                    "reason": r["left_reason"],
                    "moved": r["moved"],
                    "message": left_line(r["from_address"], r["left_reason"], r["moved"]),
                },
            }
        )
    return out


async def add_today(
    rows: list[dict[str, Any]], store: Store, queue: RedisQueue, day_s: int
) -> None:
    """Each pool sender's day so far: its effective daily limit (warm-up included) and what
    it sent today over all its campaigns (its pacing day counter, lua/pace.lua)."""
    if not rows:
        return
    senders = await store.senders_by_id([r["sender_id"] for r in rows])
    now_ms, day_ms = int(time.time() * 1000), day_s * 1000
    for r in rows:
        sender = senders.get(r["sender_id"])
        keys = queue.shard_of(r["sender_id"])
        sent = await queue.redis.get(f"{keys.pacing_prefix}{r['sender_id']}:d:{now_ms // day_ms}")
        limit = None if sender is None else daily_limit_now(sender, now_ms, day_ms)
        r["today"] = {"daily_limit": limit, "sent": int(sent or 0)}
