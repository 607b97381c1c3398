"""A message from the bounce mailbox → the `FeedbackEvent` it makes (pure, no I/O).

A DSN makes one bounce event (hard over soft, as its worst recipient says), an ARF `abuse`
or `fraud` report one complaint event; anything else makes none. The dispatch is named by
the VERP token where one is found (where the report was delivered, the returned message's
Return-Path, ARF's Original-Mail-From), else by the original Message-ID. The fingerprint is
the report's own Message-ID (else a digest of its bytes): the same report read twice is one
event.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dispatch_engine.plugin import FeedbackEvent, FeedbackKind, arf, dsn, verp

SOURCE = "imap"


@dataclass(frozen=True)
class Interpreted:
    event: FeedbackEvent | None
    note: str  # what the message was, for the log: "hard bounce", "not a report", …


def interpret(raw: bytes, max_bytes: int, paths: verp.ReturnPaths) -> Interpreted:
    """What `raw` reports. Raises only `dsn.MalformedReport` (the caller skips and logs)."""
    message = dsn.parse_message(raw, max_bytes)
    kind = dsn.report_type(message)
    if kind == "delivery-status":
        return _bounce(dsn.parse_dsn(message), raw, paths)
    if kind == "feedback-report":
        return _complaint(arf.parse_arf(message), raw, paths)
    return Interpreted(None, f"not a DSN or ARF report ({message.get_content_type()})")


def _fingerprint(kind: str, report_message_id: str | None, raw: bytes) -> str:
    own = report_message_id or "sha256:" + hashlib.sha256(raw).hexdigest()
    return f"{SOURCE}:{kind}:{own}"


def _bounce(report: dsn.DeliveryReport, raw: bytes, paths: verp.ReturnPaths) -> Interpreted:
    bounces = list(report.bounces())
    if not bounces:
        return Interpreted(None, "a DSN of a success (delivered, relayed or expanded)")
    hard = [b for b in bounces if b[1] is dsn.BounceKind.HARD]
    recipient, kind = (hard or bounces)[0]
    dispatch_id = paths.dispatch_in((*report.addressed_to, *report.return_paths))
    if dispatch_id is None and report.original_message_id is None:
        return Interpreted(None, "a DSN naming no VERP address and no Message-ID")
    detail = " ".join(p for p in (recipient.recipient, recipient.status, recipient.diagnostic) if p)
    event = FeedbackEvent(
        kind=FeedbackKind.HARD_BOUNCE if kind is dsn.BounceKind.HARD else FeedbackKind.SOFT_BOUNCE,
        source=SOURCE,
        fingerprint=_fingerprint("dsn", report.report_message_id, raw),
        dispatch_id=dispatch_id,
        message_id=report.original_message_id,
        detail=detail,
    )
    return Interpreted(event, f"{kind.value} bounce")


def _complaint(report: arf.ComplaintReport, raw: bytes, paths: verp.ReturnPaths) -> Interpreted:
    if not report.is_complaint:
        return Interpreted(None, f"a feedback report of type {report.feedback_type}")
    dispatch_id = paths.dispatch_in((*report.return_paths, *report.addressed_to))
    if dispatch_id is None and report.original_message_id is None:
        return Interpreted(None, "a complaint naming no VERP address and no Message-ID")
    who = ", ".join(report.original_rcpt_to) or "the recipient"
    event = FeedbackEvent(
        kind=FeedbackKind.COMPLAINT,
        source=SOURCE,
        fingerprint=_fingerprint("arf", report.report_message_id, raw),
        dispatch_id=dispatch_id,
        message_id=report.original_message_id,
        detail=f"{report.feedback_type} report from {report.user_agent or 'unknown'} ({who})",
    )
    return Interpreted(event, "complaint")
