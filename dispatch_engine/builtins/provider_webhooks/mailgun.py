"""Mailgun's signed webhooks: HMAC-SHA256 of timestamp + token, with replay protection.

As Mailgun documents it ("Securing Webhooks",
https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks):
the body's `signature` object holds `timestamp`, `token` (50 random characters) and
`signature`, the hex HMAC-SHA256 of timestamp and token concatenated, keyed by the webhook
signing key; a receiver should refuse a token it has seen and a stale timestamp. The
`event-data` ("Events" reference) reports `failed` (`severity` permanent: hard, temporary:
soft), `complained` and `unsubscribed`; `message.headers.message-id` is our Message-ID
without its brackets; a user variable `dispatch_token`, or the VERP envelope sender
(`envelope.sender`, `bounce+<token>@…`), carries our token; `id` is the event's.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

from .reported import Kind, Reported, angle, short, verp_token

TOKEN_VARIABLE = "dispatch_token"
EVENTS: dict[str, Kind] = {"complained": "complaint", "unsubscribed": "unsubscribe"}


class MailgunRefused(ValueError):
    """The request is not a fresh, genuinely signed Mailgun post; the text says why."""


def signed_token(body: Any, key: str, *, max_age_s: int, now: float | None = None) -> str:
    """The request's token when its signature is good and fresh (the caller refuses reuse)."""
    block = body.get("signature") if isinstance(body, Mapping) else None
    if not isinstance(block, Mapping):
        raise MailgunRefused("the body must hold a signature object")
    timestamp, token, signature = (block.get(k) for k in ("timestamp", "token", "signature"))
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        timestamp = str(timestamp)
    if not all(isinstance(v, str) and 0 < len(v) <= 256 for v in (timestamp, token, signature)):
        raise MailgunRefused("signature needs timestamp, token and signature strings")
    assert isinstance(timestamp, str) and isinstance(token, str) and isinstance(signature, str)
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise MailgunRefused("signature.timestamp must be unix seconds")
    if abs((time.time() if now is None else now) - int(timestamp)) > max_age_s:
        raise MailgunRefused(f"signature.timestamp is older than {max_age_s} s (or ahead)")
    expected = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.lower().encode()):
        raise MailgunRefused("the signature does not match")
    return token


def _kind(data: Mapping[str, Any]) -> Kind | None:
    if data.get("event") == "failed":
        return "hard_bounce" if data.get("severity") == "permanent" else "soft_bounce"
    return EVENTS.get(str(data.get("event")))


def reported(body: Mapping[str, Any]) -> list[Reported]:
    data = body.get("event-data")
    if not isinstance(data, Mapping):
        raise MailgunRefused("the body must hold an event-data object")
    kind, recipient, event_id = _kind(data), data.get("recipient"), data.get("id")
    if kind is None or not isinstance(recipient, str) or not isinstance(event_id, str):
        return []
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, Mapping) else None
    header = headers.get("message-id") if isinstance(headers, Mapping) else None
    variables = data.get("user-variables")
    token = variables.get(TOKEN_VARIABLE) if isinstance(variables, Mapping) else None
    envelope = data.get("envelope")
    if not isinstance(token, str) and isinstance(envelope, Mapping):
        token = verp_token(envelope.get("sender"))  # the VERP return path, when set
    status = data.get("delivery-status")
    detail = status.get("description") or status.get("message") if isinstance(
        status, Mapping) else data.get("reason")  # fmt: skip
    return [Reported(
        "mailgun", kind, recipient, f"mailgun:{event_id}",
        (angle(header),) if isinstance(header, str) and header.strip() else (),
        token if isinstance(token, str) else None, short(detail),
    )]  # fmt: skip
