"""A weekly window in a time zone, such as "Mon-Fri 09:00-17:00 Europe/Berlin".

The business_hours policy holds a sender to one; a campaign's sending window holds each
email to the window in its recipient's own zone (`worker/hours.py`), with holiday dates.

Days and hours are the zone's wall-clock time, so a window keeps its local hours across
daylight-saving changes. A start the clocks skip (spring forward) opens the window when the
clocks jump past it; a repeated time (fall back) counts from its first occurrence.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
EXAMPLE = "Mon-Fri 09:00-17:00 Europe/Berlin"
_SPEC = re.compile(
    r"(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})(?:\s+(?P<zone>\S+))?"
)


@dataclass(frozen=True)
class WeeklyWindow:
    days: frozenset[int]  # 0 is Monday
    start_minute: int  # after local midnight
    end_minute: int  # after local midnight, more than start; 1440 is the next midnight
    zone: ZoneInfo
    text: str
    holidays: frozenset[date] = frozenset()  # local dates on which the window stays shut

    def __str__(self) -> str:
        return self.text

    def in_zone(self, zone: ZoneInfo) -> WeeklyWindow:
        """The same days and hours on another zone's clock (a recipient's)."""
        return self if zone == self.zone else replace(self, zone=zone)

    def _intervals(self, now: datetime) -> Iterator[tuple[datetime, datetime]]:
        """[open, close) of each window day from today (local), in order: a week's worth
        plus one day per holiday, so a window of at least one day always opens."""
        today = now.astimezone(self.zone).date()
        for offset in range(8 + len(self.holidays)):
            day = today + timedelta(days=offset)
            if day.weekday() in self.days and day not in self.holidays:
                yield (
                    _instant(day, self.start_minute, self.zone),
                    _instant(day, self.end_minute, self.zone),
                )

    def next_opening(self, now: datetime) -> datetime:
        """`now` (in UTC) when the window is open, else the UTC instant it next opens."""
        for opens, closes in self._intervals(now):
            if now < closes:
                return max(opens, now.astimezone(UTC))
        raise AssertionError("a window with at least one day opens within a week and its holidays")

    def is_open(self, now: datetime) -> bool:
        return self.next_opening(now) <= now


def _instant(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """The first UTC instant at which the zone's clock shows `minute` of `day`, or later."""
    wall = datetime.combine(day, time()) + timedelta(minutes=minute)
    earlier = wall.replace(tzinfo=zone)  # fold=0: the first of a repeated time
    if earlier.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        return earlier.astimezone(UTC)
    # The clocks skip this time: find the jump, between the two readings of the offset.
    low = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    high = int(earlier.astimezone(UTC).timestamp())
    low, high = min(low, high), max(low, high)
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _day(name: str) -> int:
    key = name.strip().lower()
    for index, full in enumerate(DAY_NAMES):
        if key in (full, full[:3]):
            return index
    raise ValueError(f"{name!r} is not a day (use Mon, Tue, Wed, Thu, Fri, Sat, Sun)")


def _days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        start = _day(first)
        end = _day(last) if dash else start
        span = (end - start) % 7  # Fri-Mon wraps over the weekend
        days.update((start + i) % 7 for i in range(span + 1))
    return frozenset(days)


def _minute(text: str, *, end: bool) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if end and (hours, minutes) == (24, 0):
        return 1440
    if not (0 <= hours <= 23 and 0 <= minutes <= 59):
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59, or 24:00 as an end)")
    return hours * 60 + minutes


def parse_zone(name: str) -> ZoneInfo:
    """An IANA time zone; ValueError saying what is wrong."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{name[:64]!r} is not a time zone (use an IANA name like Europe/Berlin or UTC)"
        ) from None


def parse_weekly_window(text: str, default_zone: ZoneInfo | None = None) -> WeeklyWindow:
    """Parse "DAYS HH:MM-HH:MM ZONE"; DAYS like `Mon-Fri`, `Sat,Sun` or `Mon,Wed-Fri`. The
    zone may be left out when `default_zone` is given.

    Raises ValueError saying what is wrong.
    """
    match = _SPEC.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected days, hours and a time zone, as in {EXAMPLE!r}")
    start = _minute(match["start"], end=False)
    end = _minute(match["end"], end=True)
    if end <= start:
        raise ValueError(
            f"the window must end after it starts the same day, got {match['start']}-"
            f"{match['end']} (windows over midnight are not supported)"
        )
    if match["zone"] is None and default_zone is None:
        raise ValueError(f"expected days, hours and a time zone, as in {EXAMPLE!r}")
    zone = parse_zone(match["zone"]) if match["zone"] else default_zone
    assert zone is not None
    return WeeklyWindow(_days(match["days"]), start, end, zone, " ".join(text.split()))
