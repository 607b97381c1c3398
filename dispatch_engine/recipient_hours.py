"""A campaign's sending window in each recipient's own time: parsed and checked when a
campaign is scheduled, rebuilt by the worker from the campaign row (worker/hours.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from .errors import ValidationError
from .recipients import ParsedRecipients
from .weekly import WeeklyWindow, parse_weekly_window, parse_zone

MAX_HOLIDAYS = 366
ZONE_VARIABLE = "timezone"  # the CSV column (or JSON field) naming a recipient's zone
UTC_ZONE = ZoneInfo("UTC")


@dataclass(frozen=True)
class SendWindow:
    """What the campaign row keeps: the window's text, its default zone, its holidays."""

    text: str
    timezone: str | None
    holidays: tuple[date, ...]

    def window(self) -> WeeklyWindow:
        zone = zone_named(self.timezone) if self.timezone else UTC_ZONE
        return replace(parse_weekly_window(self.text, zone), holidays=frozenset(self.holidays))


@lru_cache(maxsize=1024)
def zone_named(name: str) -> ZoneInfo:
    return parse_zone(name)


def recipient_zone(variables: dict[str, Any], default: ZoneInfo) -> ZoneInfo:
    """The zone a recipient's `timezone` names (checked at schedule time), else `default`."""
    name = variables.get(ZONE_VARIABLE)
    if not isinstance(name, str) or not name.strip():
        return default
    try:
        return zone_named(name.strip())
    except ValueError:  # an older row or an edited one: the campaign's zone still holds
        return default


def _holiday(item: Any) -> date:
    try:
        if isinstance(item, str):
            return date.fromisoformat(item.strip())
    except ValueError:
        pass
    raise ValidationError("holidays", f"{str(item)[:40]!r} is not a date (YYYY-MM-DD)")


def _holidays(value: Any) -> tuple[date, ...]:
    """A list of dates, or one string of them separated by commas (a form field)."""
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_HOLIDAYS:
        raise ValidationError(
            "holidays", f"must be a list of at most {MAX_HOLIDAYS} dates (YYYY-MM-DD)"
        )
    return tuple(sorted({_holiday(item) for item in items}))


def parse_send_window(data: dict[str, Any]) -> SendWindow | None:
    """The `send_window`, `timezone` and `holidays` fields of a schedule request."""
    text, zone = data.get("send_window"), data.get("timezone")
    if zone is not None and zone != "":
        if not isinstance(zone, str):
            raise ValidationError("timezone", "must be an IANA time zone name")
        try:
            zone_named(zone.strip())
        except ValueError as exc:
            raise ValidationError("timezone", str(exc)) from None
    if text is None or text == "":
        if data.get("holidays"):
            raise ValidationError("holidays", "need a send_window")
        return None
    if not isinstance(text, str) or len(text) > 200:
        raise ValidationError("send_window", "must be days and hours such as Mon-Fri 09:00-17:00")
    window = SendWindow(
        " ".join(text.split()), zone.strip() if zone else None, _holidays(data.get("holidays"))
    )
    try:
        built = window.window()
    except ValueError as exc:
        raise ValidationError("send_window", str(exc)) from None
    if window.timezone and built.zone != zone_named(window.timezone):
        raise ValidationError("send_window", "names another zone than the timezone field")
    return replace(window, timezone=built.zone.key)  # the zone, wherever it was given


def reject_unknown_zones(recipients: ParsedRecipients) -> None:
    """Rows whose `timezone` names no zone are rejected with their line (a window applies
    in each recipient's zone, so a typo would send at the wrong hours)."""
    if ZONE_VARIABLE not in recipients.columns:
        return
    kept = []
    for person in recipients.accepted:
        name = person.vars.get(ZONE_VARIABLE)
        if isinstance(name, str) and name.strip():
            try:
                zone_named(name.strip())
            except ValueError as exc:
                line = recipients.line_of(person.email)
                recipients.reject(line, person.email, f"timezone: {exc}")
                continue
        kept.append(person)
    recipients.accepted[:] = kept
