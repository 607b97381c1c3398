"""The `steps` of POST /api/emails/schedule: follow-ups, each validated like the first email."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ValidationError
from ..parsing import whole_number
from ..recipients import ParsedRecipients
from ..render import TemplateProblem, check_templates, one_line

MAX_STEPS = 10
MAX_WAIT_DAYS = 365
MAX_SUBJECT = 998
MAX_BODY = 1_000_000
_FIELDS = {"after_days", "business_days", "subject", "body", "html"}


@dataclass(frozen=True)
class StepRequest:
    """Follow-up `step` (1..10): sent `after_days` (pacing) days after the previous step."""

    step: int
    after_days: int
    business_days: bool
    subject: str | None  # None: "Re: " + the first step's rendered subject
    body: str
    html: str | None


def _text(item: Mapping[str, Any], name: str, field: str, *, limit: int) -> str | None:
    value = item.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    if len(value) > limit:
        raise ValidationError(field, f"must be at most {limit} characters")
    return value


def _step(index: int, item: Any) -> StepRequest:
    where = f"steps[{index}]"
    if not isinstance(item, dict):
        raise ValidationError(where, "must be an object with after_days and body")
    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        raise ValidationError(f"{where}.{unknown[0]}", "is not a field of a step")
    days = item.get("after_days")
    if days is None:
        raise ValidationError(f"{where}.after_days", "is required")
    after_days = whole_number(days, f"{where}.after_days", minimum=1, maximum=MAX_WAIT_DAYS)
    business = item.get("business_days", False)
    if not isinstance(business, bool):
        raise ValidationError(f"{where}.business_days", "must be true or false")
    subject = _text(item, "subject", f"{where}.subject", limit=MAX_SUBJECT)
    if subject is not None and ("\n" in subject or "\r" in subject):
        raise ValidationError(f"{where}.subject", "must be a single line")
    body = _text(item, "body", f"{where}.body", limit=MAX_BODY)
    if body is None:
        raise ValidationError(f"{where}.body", "is required")
    html = _text(item, "html", f"{where}.html", limit=MAX_BODY)
    return StepRequest(index + 1, after_days, business, subject, body, html)


def parse_steps(value: Any) -> tuple[StepRequest, ...]:
    """The follow-ups of a request (none when the field is absent); errors name the field,
    e.g. `steps[1].body` (0-based, as in the request's list)."""
    if value is None or value == "" or value == []:
        return ()
    if isinstance(value, str):  # a multipart form's field: the list as JSON text
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ValidationError("steps", "must be a JSON list of follow-ups") from None
    if not isinstance(value, list):
        raise ValidationError("steps", "must be a list of follow-ups")
    if len(value) > MAX_STEPS:
        raise ValidationError("steps", f"must hold at most {MAX_STEPS} follow-ups")
    return tuple(_step(i, item) for i, item in enumerate(value))


def check_steps(
    steps: tuple[StepRequest, ...], recipients: ParsedRecipients
) -> tuple[StepRequest, ...]:
    """Compile and render each step for the first recipient, as for the first email (CPU
    work: parse_schedule_request runs off the loop), and refuse line breaks in the values a
    step's subject (a header) uses."""
    if not steps or not recipients.accepted:
        return steps
    first = recipients.accepted[0]
    sample = (first.email, first.vars)
    subject_vars: set[str] = set()
    for s in steps:
        try:
            subject_vars |= check_templates(
                s.subject or "", s.body, s.html, recipients.columns, sample
            )
        except TemplateProblem as exc:
            field = f"steps[{s.step - 1}].{exc.field}"
            message = str(exc).removeprefix(f"{exc.field}: ").removeprefix(f"{exc.field} ")
            raise ValidationError(field, message) from None
    subject_vars.discard("email")
    for person in recipients.accepted if subject_vars else ():
        for name in subject_vars:
            value = person.vars.get(name)
            if isinstance(value, str) and one_line(value) != value:
                raise ValidationError(
                    "recipients",
                    f"{person.email}: {name!r} is used in a step's subject (a header) and "
                    "contains a line break",
                )
    return steps
