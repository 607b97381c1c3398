"""RFC 5965 Abuse Reporting Format: a complaint (a feedback loop's "this is spam").

An ARF report is `multipart/report; report-type=feedback-report`: a human part, a
`message/feedback-report` part (`Feedback-Type`, `User-Agent`, `Version`, and optionally
`Original-Mail-From`, `Original-Rcpt-To`, `Arrival-Date`, `Source-IP`, …) and the reported
message (`message/rfc822`) or its headers (`text/rfc822-headers`). The reported message's
`Return-Path` is our VERP address when the receiver kept it, and its Message-ID is ours.
Pure, like dsn.py, whose helpers it shares; `parse_arf` raises only `MalformedReport`.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage, Message

from .dsn import (
    MAX_RECIPIENTS,
    MalformedReport,
    bare_address,
    delivered_to,
    field,
    message_id,
    original_headers,
    part_of,
)

# Feedback types (RFC 5965 and RFC 6650) that mean "the recipient complained": not
# `not-spam`, and not `auth-failure` (RFC 6591: a DMARC/SPF failure, about the sender's
# domain, not a person's wish), nor `virus` or `other`.
COMPLAINT_TYPES = frozenset({"abuse", "fraud"})


@dataclass(frozen=True)
class ComplaintReport:
    feedback_type: str  # abuse, fraud, virus, other, not-spam, auth-failure (lower case)
    report_message_id: str | None  # the report's own Message-ID (the event fingerprint)
    original_message_id: str | None  # the reported message's (ours, if we sent it)
    original_rcpt_to: tuple[str, ...]  # Original-Rcpt-To: who complained, when not redacted
    return_paths: tuple[str, ...]  # Original-Mail-From and the reported Return-Path (VERP)
    addressed_to: tuple[str, ...]  # where the report itself was delivered
    user_agent: str | None
    arrival_date: str | None

    @property
    def is_complaint(self) -> bool:
        return self.feedback_type in COMPLAINT_TYPES


def parse_arf(message: EmailMessage) -> ComplaintReport:
    """The ARF `message` (`report_type(message) == "feedback-report"`) as a record."""
    try:
        return _parse_arf(message)
    except MalformedReport:
        raise
    except Exception as exc:  # header objects of hostile input can raise from deep inside
        raise MalformedReport(f"malformed ARF report: {type(exc).__name__}: {exc}") from None


def _parse_arf(message: EmailMessage) -> ComplaintReport:
    part = part_of(message, "message/feedback-report")
    if part is None:
        raise MalformedReport("a feedback-report without a message/feedback-report part")
    fields = _fields(part)
    feedback_type = (field(fields, "Feedback-Type") or "").lower()
    if not feedback_type:
        raise MalformedReport("a feedback report without Feedback-Type")
    original = original_headers(message)
    return_paths = [a for a in (bare_address(field(fields, "Original-Mail-From")),) if a]
    if original is not None:
        return_paths += [a for a in (bare_address(field(original, "Return-Path")),) if a]
    recipients = fields.get_all("Original-Rcpt-To", [])[:MAX_RECIPIENTS]
    return ComplaintReport(
        feedback_type=feedback_type,
        report_message_id=message_id(message),
        original_message_id=message_id(original) if original is not None else None,
        original_rcpt_to=tuple(
            a for r in recipients if (a := bare_address(" ".join(str(r).split())))
        ),
        return_paths=tuple(dict.fromkeys(return_paths)),
        addressed_to=delivered_to(message),
        user_agent=field(fields, "User-Agent"),
        arrival_date=field(fields, "Arrival-Date") or field(fields, "Received-Date"),
    )


def _fields(part: Message) -> Message:
    """The machine-readable fields: the parser gives a `message/*` part's body as a message,
    or (some encodings) as text to parse as headers."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        raise MalformedReport("an unreadable message/feedback-report part")
    return email.message_from_bytes(raw, policy=email.policy.default)
