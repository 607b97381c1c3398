"""Recipients spread over a pool's senders by what each can still send, day by day.

Pure arithmetic on the pacing day (DISPATCH_DAY_SECONDS): a sender's capacity on a day is
the lowest of its daily limit that day (its warm-up ramp's, `warmup.daily_limit_now`), its
hourly limit over the day's rate windows, the gap between emails, and the campaign's own
caps (counted per sender: pace.lua keys them by sender). Days are filled in order, each
day's room shared in proportion to each sender's room that day, so every sender finishes
its share about when the others do: a sender at 10 a day gets a tenth of what one at 100 a
day gets, and a sender warming up gets less in its first days.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..models import Sender
from ..warmup import daily_limit_now

MAX_DAYS = 3660  # ten years of days: past that a pool is as good as stopped
UNLIMITED = 10**12


@dataclass(frozen=True)
class PacingFrame:
    """The clock and the campaign's own limits the capacities are counted in."""

    start_ms: int  # the campaign's first email (or now, if later)
    day_ms: int
    window_ms: int  # DISPATCH_RATE_WINDOW_SECONDS
    campaign_gap_ms: int = 0
    campaign_hourly: int | None = None
    campaign_daily: int | None = None


def day_capacity(sender: Sender, day: int, frame: PacingFrame) -> int:
    """How many of the campaign's emails `sender` can send on pacing day `day` (0: the
    campaign's first), by its limits alone; 0 when it is parked."""
    if sender.parked_reason is not None:
        return 0
    at_ms = frame.start_ms + day * frame.day_ms
    windows = math.ceil(frame.day_ms / frame.window_ms)
    caps = [sender.hourly_limit * windows]
    daily = daily_limit_now(sender, at_ms, frame.day_ms)
    if daily is not None:
        caps.append(daily)
    gap = max(sender.min_gap_ms, frame.campaign_gap_ms)
    if gap > 0:
        caps.append(max(1, frame.day_ms // gap))
    if frame.campaign_hourly is not None:
        caps.append(frame.campaign_hourly * windows)
    if frame.campaign_daily is not None:
        caps.append(frame.campaign_daily)
    return max(0, min(min(caps), UNLIMITED))


def _shares(amount: int, weights: Sequence[int]) -> list[int]:
    """`amount` split in proportion to `weights` (largest remainder; ties to the first)."""
    total = sum(weights)
    exact = [amount * w / total for w in weights]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: amount - sum(shares)]:
        shares[i] += 1
    return shares


def split(
    count: int, senders: Sequence[Sender], frame: PacingFrame, taken: Sequence[int] = ()
) -> list[int] | None:
    """How many of `count` recipients each sender gets; `taken[i]`: what sender i already
    has to send from the first day on (used today, queued). None: no sender can send."""
    if all(sender.parked_reason is not None for sender in senders):
        return None
    left = count
    owed = list(taken) or [0] * len(senders)
    counts = [0] * len(senders)
    room = [0] * len(senders)
    for day in range(MAX_DAYS):
        room = []
        for i, sender in enumerate(senders):
            cap = day_capacity(sender, day, frame)
            used = min(cap, owed[i])
            owed[i] -= used
            room.append(cap - used)
        free = sum(room)
        if free == 0:  # the day is taken by what they had to send already
            continue
        if free >= left:
            return [c + s for c, s in zip(counts, _shares(left, room), strict=True)]
        counts = [c + r for c, r in zip(counts, room, strict=True)]
        left -= free
    # Years of work: the rest goes as the last day's room would share it.
    weights = room if sum(room) else [int(s.parked_reason is None) for s in senders]
    return [c + s for c, s in zip(counts, _shares(left, weights), strict=True)]


def interleave(counts: Sequence[int]) -> list[int]:
    """The index of the sender of each recipient, in order: sender i's k-th recipient sits at
    (k + 0.5) / counts[i] of the way, so each share is spread over the whole campaign, not one
    block after another (100,000 recipients: one sort)."""
    places = [((k + 0.5) / n, i) for i, n in enumerate(counts) for k in range(n)]
    places.sort()
    return [i for _, i in places]
