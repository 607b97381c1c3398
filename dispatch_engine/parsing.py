"""Strict parsing of what users send: ids, limits, dates and idempotency keys.

Every value is checked before it reaches PostgreSQL or arithmetic: ASCII digits only (`¹`
passes `str.isdigit()` and then fails `int()`), within int64, dates that stay inside the
calendar once converted to UTC. A bad value is a `ValidationError` naming the field (a
422 over HTTP), never a 500. The listings' cursors are `web/paging.py`'s.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .errors import ValidationError

INT64_MAX = 2**63 - 1
_MAX_DIGITS = 19  # len(str(INT64_MAX)): anything longer is out of range, not worth int()


def whole_number(value: Any, field: str, *, minimum: int = 0, maximum: int = INT64_MAX) -> int:
    """A JSON integer, or a string of ASCII digits (an optional leading '-'), in range."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValidationError(field, f"must be a whole number, got {_show(value)}")
    if isinstance(value, str):
        text = value.strip()
        digits = text.removeprefix("-")
        if not (digits.isascii() and digits.isdigit()) or len(digits) > _MAX_DIGITS:
            if digits.isascii() and digits.isdigit():
                raise ValidationError(field, f"must be between {minimum} and {maximum}")
            raise ValidationError(field, f"must be a whole number, got {_show(value)}")
        number = int(text)
    else:
        number = value
    if not minimum <= number <= maximum:
        raise ValidationError(field, f"must be between {minimum} and {maximum}, got {_show(value)}")
    return number


def row_id(value: Any, field: str = "id") -> int:
    """A row id: 1 .. 2^63-1 (PostgreSQL's bigint)."""
    return whole_number(value, field, minimum=1)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def aware_datetime(value: Any, field: str) -> datetime:
    """An ISO 8601 date-time with a UTC offset, returned in UTC (422 naming the field)."""
    if not isinstance(value, str):
        raise ValidationError(field, "must be an ISO 8601 date-time string")
    text = value.strip()
    try:
        if len(text) > 64:
            raise ValueError
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(field, f"is not an ISO 8601 date-time: {_show(value)}") from None
    if parsed.tzinfo is None:
        raise ValidationError(field, "needs a UTC offset, e.g. 2026-01-31T09:00:00+01:00 or …Z")
    try:
        # 9999-12-31T23:59:59-23:59 is past the calendar's end once in UTC.
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValidationError(
            field, f"is outside the calendar once in UTC: {_show(value)}"
        ) from None


MAX_IDEMPOTENCY_KEY = 200


def idempotency_key(value: str | None) -> str | None:
    """The Idempotency-Key header: printable ASCII, at most 200 characters (it is indexed)."""
    if value is None or value.strip() == "":
        return None
    if len(value) > MAX_IDEMPOTENCY_KEY or not (value.isascii() and value.isprintable()):
        raise ValidationError(
            "Idempotency-Key",
            f"must be printable ASCII of at most {MAX_IDEMPOTENCY_KEY} characters",
        )
    return value
