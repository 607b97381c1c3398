"""RFC 3464 delivery status notifications: what a bounce report says, per recipient.

A DSN is `multipart/report; report-type=delivery-status` (RFC 6522): a human part, a
`message/delivery-status` part (one block of per-message fields, then one block per
recipient: `Final-Recipient`, `Action`, `Status`, `Diagnostic-Code`, …) and usually the
returned message (`message/rfc822`) or its headers (`text/rfc822-headers`), which carry the
original Message-ID. Parsing is pure (bytes in, records out) with Python's `email` package
under `email.policy.default`; `parse_report` is the one entry point the readers call, and it
never raises anything but `MalformedReport`.

Why not flufl.bounce (Mailman's detectors): it answers only "these addresses bounced,
permanently or not", guessed from ~40 pre-DSN formats. It gives no Status, no Message-ID,
so it cannot name the dispatch, and a guessed "permanent" would suppress a real person.
Every MTA and provider we meet emits RFC 3464 (Postfix, Exim 4, Sendmail, Exchange, Gmail,
Microsoft, Yahoo, SES), and the VERP return path names the dispatch of any bounce anyway; a
report that is not a DSN or ARF is skipped and logged instead of guessed at.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from enum import StrEnum

MAX_RECIPIENTS = 100  # per-recipient blocks read from one report; a report is one message
MAX_FIELD_CHARS = 1000  # a diagnostic longer than this is cut (it is only shown)
_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")  # RFC 3463 class.subject.detail


class MalformedReport(ValueError):
    """A report too large, or not parseable as what its Content-Type says; skipped and logged."""


class BounceKind(StrEnum):
    HARD = "hard"  # failed with a permanent (5.x.x) status
    SOFT = "soft"  # delayed, or failed with a transient (4.x.x) status


@dataclass(frozen=True)
class DsnRecipient:
    """One per-recipient block of a DSN."""

    recipient: str  # Final-Recipient's address (else Original-Recipient's)
    original_recipient: str | None
    action: str  # failed, delayed, delivered, relayed, expanded (lower case)
    status: str | None  # "5.1.1"
    diagnostic: str | None  # Diagnostic-Code, e.g. `smtp; 550 5.1.1 no such user`

    @property
    def kind(self) -> BounceKind | None:
        """Hard or soft bounce; None for a success report (delivered, relayed, expanded)."""
        status = _STATUS.match(self.status or "")
        if self.action == "failed":
            transient = status is not None and status.group(1) == "4"
            return BounceKind.SOFT if transient else BounceKind.HARD
        if self.action == "delayed":
            return BounceKind.SOFT
        return None


@dataclass(frozen=True)
class DeliveryReport:
    report_message_id: str | None  # the DSN's own Message-ID (part of the event fingerprint)
    original_message_id: str | None  # from the returned message or its headers
    original_envelope_id: str | None  # ENVID, if the sender gave one
    addressed_to: tuple[str, ...]  # where the DSN was delivered (the VERP return path)
    return_paths: tuple[str, ...]  # the returned message's Return-Path (VERP, if kept)
    recipients: tuple[DsnRecipient, ...]

    def bounces(self) -> Iterator[tuple[DsnRecipient, BounceKind]]:
        for recipient in self.recipients:
            if (kind := recipient.kind) is not None:
                yield recipient, kind


def parse_message(raw: bytes, max_bytes: int) -> EmailMessage:
    """The report as an `EmailMessage`; `MalformedReport` if it is over `max_bytes`."""
    if len(raw) > max_bytes:
        raise MalformedReport(f"report of {len(raw)} bytes is over the {max_bytes}-byte cap")
    try:
        message = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception as exc:  # the parser is lenient, but recursion or a bad charset can raise
        raise MalformedReport(f"unparseable message: {type(exc).__name__}") from None
    assert isinstance(message, EmailMessage)  # policy.default makes EmailMessage
    return message


def report_type(message: Message) -> str | None:
    """`delivery-status`, `feedback-report`, … for a `multipart/report`; None otherwise."""
    if message.get_content_type() != "multipart/report":
        return None
    value = message.get_param("report-type")
    return value.lower() if isinstance(value, str) else None


def parse_dsn(message: EmailMessage) -> DeliveryReport:
    """The DSN `message` (`report_type(message) == "delivery-status"`) as a record."""
    try:
        return _parse_dsn(message)
    except MalformedReport:
        raise
    except Exception as exc:  # header objects of hostile input can raise from deep inside
        raise MalformedReport(f"malformed DSN: {type(exc).__name__}: {exc}") from None


def _parse_dsn(message: EmailMessage) -> DeliveryReport:
    status = part_of(message, "message/delivery-status", "message/global-delivery-status")
    if status is None:
        raise MalformedReport("a delivery-status report without a message/delivery-status part")
    payload = status.get_payload()
    blocks = [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []
    if not blocks:
        raise MalformedReport("an empty message/delivery-status part")
    per_message, per_recipient = blocks[0], blocks[1 : MAX_RECIPIENTS + 1]
    recipients = tuple(r for block in per_recipient if (r := _recipient(block)) is not None)
    if not recipients:
        raise MalformedReport("a DSN that names no recipient")
    original = original_headers(message)
    return DeliveryReport(
        report_message_id=message_id(message),
        original_message_id=message_id(original) if original is not None else None,
        original_envelope_id=field(per_message, "Original-Envelope-Id"),
        addressed_to=delivered_to(message),
        return_paths=tuple(a for a in (bare_address(field(original, "Return-Path")),) if a)
        if original is not None
        else (),
        recipients=recipients,
    )


def _recipient(block: Message) -> DsnRecipient | None:
    final = typed_address(field(block, "Final-Recipient"))
    original = typed_address(field(block, "Original-Recipient"))
    action = (field(block, "Action") or "").lower()
    address = final or original
    if address is None or not action:
        return None
    status = field(block, "Status")
    status = status.split()[0] if status else None  # "5.1.1 (comment)" happens
    return DsnRecipient(address, original, action, status, field(block, "Diagnostic-Code"))


# ---- helpers shared with arf.py: fields, addresses, the returned message ----


def field(block: Message, name: str) -> str | None:
    """A header field's value as one stripped line (folding undone), cut to a sane size."""
    value = block.get(name)
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text[:MAX_FIELD_CHARS] or None


def typed_address(value: str | None) -> str | None:
    """`rfc822; ann@example.com` (RFC 3464 address-type; address) → `ann@example.com`."""
    if not value:
        return None
    kind, sep, address = value.partition(";")
    if not sep:
        address = kind  # some MTAs leave the type out
    elif kind.strip().lower() not in ("rfc822", "utf-8"):
        return None  # an X.400 or other non-email address: not one of ours
    address = address.strip().strip("<>").strip()
    return address if "@" in address and len(address) <= 320 else None


def bare_address(value: str | None) -> str | None:
    """`<ann@example.com>` → `ann@example.com`; None for `<>` or no address."""
    if not value:
        return None
    address = value.strip().strip("<>").strip()
    return address if "@" in address and len(address) <= 320 else None


def part_of(message: Message, *content_types: str) -> Message | None:
    """The first top-level part of a `multipart/report` with one of `content_types`."""
    if not message.is_multipart():
        return None
    for part in message.get_payload():
        if isinstance(part, Message) and part.get_content_type() in content_types:
            return part
    return None


def original_headers(message: Message) -> Message | None:
    """The returned message's headers: a `message/rfc822` part or `text/rfc822-headers`."""
    returned = part_of(message, "message/rfc822", "message/global")
    if returned is not None:
        inner = returned.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            return inner[0]
    headers = part_of(message, "text/rfc822-headers", "message/global-headers")
    if headers is not None:
        payload = headers.get_payload(decode=True)
        if isinstance(payload, bytes):
            return BytesHeaderParser(policy=email.policy.default).parsebytes(payload)
    return None


def message_id(headers: Message) -> str | None:
    """`<id@host>` of a Message-ID field, or None when it has none or a malformed one."""
    value = field(headers, "Message-ID")
    if value is None:
        return None
    found = re.search(r"<[^<>\s]{1,250}>", value)
    return found.group(0) if found else None


def delivered_to(message: Message) -> tuple[str, ...]:
    """Where this message was delivered: Delivered-To, X-Original-To, Envelope-To, To."""
    found: list[str] = []
    for name in ("Delivered-To", "X-Original-To", "Envelope-To", "To"):
        for value in message.get_all(name, [])[:10]:
            for address in re.findall(r"[^\s<>,;:\"]+@[^\s<>,;:\"]+", str(value)):
                if address not in found:
                    found.append(address)
    return tuple(found)
