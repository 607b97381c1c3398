"""The compose form's own check, before any schedule: every field at once, each message in the
form's words and units ("Delay must be 0 or more seconds", not `delay_between_ms … -5000`),
and warnings that do not stop it (a start in the past, a limit above the sender's).

Keys are the form's field names (`delay_seconds`, `start_local`, …). The schedule itself
still validates everything (the API's rules); this only says it first, and all together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..campaigns import MAX_BODY, MAX_NAME, MAX_SUBJECT
from ..errors import ValidationError
from ..models import Sender
from ..parsing import aware_datetime

MAX_DELAY_S = 86_400  # the API's 86,400,000 ms
MAX_LIMIT = 1_000_000_000
PAST_GRACE = timedelta(minutes=1)  # "now", typed a moment ago, is not a start in the past


@dataclass
class FormCheck:
    errors: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)


def _text(check: FormCheck, values: Mapping[str, Any], name: str, label: str, limit: int,
          *, required: bool = False, one_line: bool = False) -> None:  # fmt: skip
    value = values.get(name)
    if value is None or value == "":
        if required:
            check.errors[name] = f"{label} is required"
        return
    if not isinstance(value, str):
        check.errors[name] = f"{label} must be text"
    elif len(value) > limit:
        check.errors[name] = f"{label} must be at most {limit:,} characters"
    elif one_line and ("\n" in value or "\r" in value):
        check.errors[name] = f"{label} must be a single line"


def _seconds(check: FormCheck, values: Mapping[str, Any], name: str, label: str) -> None:
    raw = values.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return
    try:
        seconds = float(raw) if isinstance(raw, int | float | str) else math.nan
    except ValueError:
        seconds = math.nan
    if isinstance(raw, bool) or not math.isfinite(seconds):
        check.errors[name] = f"{label} must be a number of seconds"
    elif seconds < 0:
        check.errors[name] = f"{label} must be 0 or more seconds"
    elif seconds > MAX_DELAY_S:
        check.errors[name] = f"{label} must be at most {MAX_DELAY_S:,} seconds (a day)"


def _limit(check: FormCheck, values: Mapping[str, Any], name: str, label: str) -> int | None:
    raw = values.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    text = str(raw).strip() if isinstance(raw, int | str) and not isinstance(raw, bool) else ""
    digits = text.isascii() and text.isdigit() and len(text) <= len(str(MAX_LIMIT))
    if not digits or not 1 <= int(text) <= MAX_LIMIT:
        check.errors[name] = f"{label} must be a whole number from 1 to {MAX_LIMIT:,}"
        return None
    return int(text)


def _start(check: FormCheck, values: Mapping[str, Any], now: datetime) -> None:
    raw = values.get("start_at")
    if raw is None or raw == "":
        return
    try:
        at = aware_datetime(raw, "start_at")
    except ValidationError:
        check.errors["start_local"] = "Start is not a date and time"
        return
    if at.year >= 9999:
        check.errors["start_local"] = "Start must be before the year 9999"
    elif at < now - PAST_GRACE:
        check.warnings["start_local"] = (
            "This start is in the past: the emails will go out as soon as you schedule."
        )


def _sender(values: Mapping[str, Any], senders: Sequence[Sender]) -> Sender | None:
    chosen = str(values.get("sender") or "").strip()
    if not chosen:
        return senders[0] if senders else None
    return next((s for s in senders if str(s.id) == chosen or s.from_address == chosen), None)


def check_form(values: Mapping[str, Any], senders: Sequence[Sender], now: datetime) -> FormCheck:
    """Every problem of the form at once, and its warnings. `values`: the form's fields, with
    `start_at` already an ISO time with its offset and `has_recipients` a yes/no."""
    check = FormCheck()
    _text(check, values, "name", "Campaign name", MAX_NAME, one_line=True)
    _text(check, values, "subject", "Subject", MAX_SUBJECT, required=True, one_line=True)
    _text(check, values, "body", "Body", MAX_BODY, required=True)
    _text(check, values, "html", "HTML version", MAX_BODY)
    if not values.get("has_recipients"):
        check.errors["recipients"] = "Add recipients: upload a file or paste addresses"
    _start(check, values, now)
    _seconds(check, values, "delay_seconds", "Delay")
    _seconds(check, values, "jitter_seconds", "Random extra delay")
    hourly = _limit(check, values, "hourly_limit", "Hourly limit")
    daily = _limit(check, values, "daily_limit", "Daily limit")
    sender = _sender(values, senders)
    if values.get("sender") and sender is None:
        check.errors["sender"] = "Pick one of your senders"
    if sender is not None and hourly is not None and hourly > sender.hourly_limit:
        check.warnings["hourly_limit"] = (
            f"Above the sender's limit of {sender.hourly_limit:,} an hour: "
            f"it sends at most {sender.hourly_limit:,} an hour."
        )
    if (
        sender is not None
        and daily is not None
        and sender.daily_limit
        and daily > sender.daily_limit
    ):
        check.warnings["daily_limit"] = (
            f"Above the sender's daily limit of {sender.daily_limit:,}: "
            f"it sends at most {sender.daily_limit:,} a day."
        )
    return check
