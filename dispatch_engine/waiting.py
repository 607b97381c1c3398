"""Why a queued email waits, until when; and when a campaign's last email should go (ETA).

The worker writes a reason (a `WaitReason`) and a time on each email pacing holds back
(`dispatches.wait_reason`, `wait_until`); the rest is read from the campaign and its sender.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .config import Settings
from .models import Sender
from .pacing import WaitReason
from .warmup import daily_limit_now


def wait_of(row: Any, now: datetime) -> tuple[WaitReason | None, datetime | None]:
    """(reason, until) of one queued dispatch; (None, None) when it is due or in flight.

    `row` has status, scheduled_at, wait_reason, wait_until and campaign_status.
    """
    if row["campaign_status"] == "paused":
        return WaitReason.PAUSED, None
    if row["status"] == "sending":
        return None, None
    if row["wait_reason"] == WaitReason.AUTH_FAILURE:  # until its account is fixed or resumed
        return WaitReason.AUTH_FAILURE, None
    until = row["wait_until"]
    if row["status"] == "rate_limited" and row["wait_reason"] and until and until > now:
        try:
            return WaitReason(row["wait_reason"]), until
        except ValueError:  # written by a newer version
            return WaitReason.POLICY, until
    if row["scheduled_at"] > now:
        return WaitReason.SCHEDULED, row["scheduled_at"]
    return None, None


@dataclass(frozen=True)
class Pace:
    """The most a campaign may send under every limit on it (inf: no such limit)."""

    gap_ms: int
    per_window: float  # per rate window (`DISPATCH_RATE_WINDOW_SECONDS`)
    per_day: float


def campaign_pace(
    detail: dict[str, Any], sender: Sender | None, settings: Settings, now: datetime
) -> Pace:
    """The campaign's pace at `now`: its own limits, its sender's (its warm-up day's) and
    the gap between emails."""
    window_ms, day_ms = settings.rate_window_seconds * 1000, settings.day_seconds * 1000
    gap = max(detail["delay_between_ms"], sender.min_gap_ms if sender else 0)
    per_window = min(
        x
        for x in (
            sender.hourly_limit if sender else math.inf,
            detail["hourly_limit"] or math.inf,
            window_ms // gap if gap else math.inf,
        )
    )
    per_day = min(
        x
        for x in (
            (daily_limit_now(sender, int(now.timestamp() * 1000), day_ms) or math.inf)
            if sender
            else math.inf,
            detail.get("daily_limit") or math.inf,
            per_window * max(1, day_ms // window_ms),
        )
    )
    return Pace(gap, per_window, per_day)


def campaign_eta(
    detail: dict[str, Any],
    sender: Sender | None,
    settings: Settings,
    now: datetime,
    not_before: datetime | None = None,
) -> datetime | None:
    """When the campaign's last email should go, from its backlog and every limit on it.

    `not_before`: the sender's park or its held emails' earliest wait. An estimate that
    assumes the campaign has its sender to itself (other campaigns of the sender share its
    window and day). None when nothing is left to send.
    """
    counts = detail["counts"]
    backlog = counts["scheduled"] + counts["rate_limited"] + counts["sending"]
    if backlog == 0 or detail["status"] in ("cancelled", "completed"):
        return None
    window_ms, day_ms = settings.rate_window_seconds * 1000, settings.day_seconds * 1000
    pace = campaign_pace(detail, sender, settings, now)
    gap, per_window, per_day = pace.gap_ms, pace.per_window, pace.per_day
    start = max(now, detail["start_at"], not_before or now)
    ms = 0.0
    rest = backlog
    if per_day != math.inf and rest > per_day:
        days = (rest - 1) // per_day
        rest -= days * per_day
        ms = days * day_ms  # later days start at the day's start, like the limit
    if per_window != math.inf and rest > per_window:
        windows = (rest - 1) // per_window
        rest -= windows * per_window
        ms += windows * window_ms
    ms += max(0, rest - 1) * gap
    eta: datetime = (start + timedelta(milliseconds=ms)).astimezone(UTC)
    return eta


@dataclass(frozen=True)
class Waiting:
    """How many of a campaign's queued emails wait for one reason, until when."""

    reason: str | None  # a WaitReason's value
    count: int
    until: datetime | None


@dataclass(frozen=True)
class CampaignWait:
    eta: datetime | None
    waiting: list[Waiting]


async def campaign_wait(
    store: Any, queue: Any, settings: Settings, owner_id: int, detail: dict[str, Any]
) -> CampaignWait:
    """A campaign's ETA and its waiting emails by reason (the API and its page show both)."""
    now = datetime.now(UTC)
    sender = await store.find_sender(owner_id, detail["sender_id"])
    parked = None
    try:
        state = await queue.sender_state(detail["sender_id"])
        if state["parked_until_ms"]:
            parked = datetime.fromtimestamp(state["parked_until_ms"] / 1000, UTC)
    except Exception:  # the answer still holds everything PostgreSQL knows
        pass
    rows = await store.campaign_waiting(detail["id"])
    sender_level = [WaitReason.SENDER_WINDOW, WaitReason.DAILY_LIMIT]
    park_reason = next((r["reason"] for r in rows if r["reason"] in sender_level), None)
    waiting = []
    for row in rows:
        reason, until = row["reason"], row["until"]
        if detail["status"] == "paused":
            reason, until = WaitReason.PAUSED, None
        elif reason == WaitReason.AUTH_FAILURE:  # until a user fixes or resumes the sender
            until = None
        elif reason is None:  # due: held by the sender's park (a limit or the gap), or going
            reason = (park_reason or WaitReason.MIN_GAP) if parked else None
            until = parked
        waiting.append(Waiting(reason, row["n"], until))
    held = [r["until"] for r in rows if r["reason"] not in (None, WaitReason.SCHEDULED)]
    not_before = max([t for t in (parked, min(held, default=None)) if t is not None], default=None)
    eta = campaign_eta(detail, sender, settings, now, not_before)
    if any(r["reason"] == WaitReason.AUTH_FAILURE for r in rows):
        eta = None  # no estimate while its account refuses the login
    return CampaignWait(eta, waiting)
