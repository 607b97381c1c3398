"""A campaign's pool as the API and the campaign page show it (store.pool_of's rows)."""

from __future__ import annotations

from typing import Any

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
