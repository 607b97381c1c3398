"""Warm-up: a new mailbox's daily limit ramps up from the day its ramp started.

The limit of a day is computed from dates only (the ramp's start and the pacing day of
DISPATCH_DAY_SECONDS), never from a counter kept in memory or in Redis: a restart, a
FLUSHALL or a second worker sees the same limit. Days count by the calendar, not by days
the mailbox sent on: a pause of a week resumes at that week's limit, as mailbox providers
judge a sender by its volume per day, and an operator who wants to slow down again sets the
ramp anew (which restarts it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .errors import ValidationError
from .models import Sender, Warmup

MAX_PER_DAY = 1_000_000_000


def warmup_day(warmup: Warmup, now_ms: int, day_ms: int) -> int:
    """0 on the pacing day the ramp started, 1 the day after, …"""
    started_ms = int(warmup.started_at.timestamp() * 1000)
    return max(0, now_ms // day_ms - started_ms // day_ms)


def warmup_limit(warmup: Warmup, now_ms: int, day_ms: int) -> int:
    return min(warmup.max, warmup.start + warmup.step * warmup_day(warmup, now_ms, day_ms))


def daily_limit_now(sender: Sender, now_ms: int, day_ms: int) -> int | None:
    """The sender's effective daily limit today: its own and its ramp's, whichever is lower."""
    if sender.warmup is None:
        return sender.daily_limit
    ramp = warmup_limit(sender.warmup, now_ms, day_ms)
    return ramp if sender.daily_limit is None else min(ramp, sender.daily_limit)


def _whole(field: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_PER_DAY:
        raise ValidationError(field, f"must be a whole number from {low} to {MAX_PER_DAY}")
    return value


def parse_warmup(value: Any, current: Warmup | None) -> dict[str, Any]:
    """The sender columns of a `warmup` field: null (no ramp) or {start, step, max}.

    The ramp (re)starts today when it is new or its numbers change; sent again unchanged it
    keeps its start date, so re-saving a sender does not restart its ramp."""
    none = {"warmup_start": None, "warmup_step": None, "warmup_max": None}
    if value is None:
        return {**none, "warmup_started_at": None}
    if not isinstance(value, dict):
        raise ValidationError("warmup", "must be null or an object {start, step, max}")
    unknown = set(value) - {"start", "step", "max"}
    if unknown:
        raise ValidationError(f"warmup.{sorted(unknown)[0]}", "is not a warm-up field")
    start = _whole("warmup.start", value.get("start"), 1)
    step = _whole("warmup.step", value.get("step"), 0)
    most = _whole("warmup.max", value.get("max"), 1)
    if most < start:
        raise ValidationError("warmup.max", "must be at least warmup.start")
    same = current is not None and (current.start, current.step, current.max) == (start, step, most)
    started = current.started_at if same and current is not None else datetime.now(UTC)
    return {
        "warmup_start": start,
        "warmup_step": step,
        "warmup_max": most,
        "warmup_started_at": started,
    }


def warmup_json(sender: Sender, now_ms: int, day_ms: int) -> dict[str, Any] | None:
    ramp = sender.warmup
    if ramp is None:
        return None
    return {
        "start": ramp.start,
        "step": ramp.step,
        "max": ramp.max,
        "started_at": ramp.started_at.isoformat(),
        "day": warmup_day(ramp, now_ms, day_ms),
        "limit_today": warmup_limit(ramp, now_ms, day_ms),
    }
