"""SendGrid's signed Event Webhook: ECDSA P-256 with SHA-256 over timestamp + raw body.

As SendGrid documents it ("Getting Started with the Event Webhook Security Features",
https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features,
and its SDKs' `EventWebhook.verify_signature`): the payload signed is the
`X-Twilio-Email-Event-Webhook-Timestamp` header's value followed by the raw body; the
`X-Twilio-Email-Event-Webhook-Signature` header is the base64 DER signature. The body is a
JSON array of events ("Event Webhook reference"): `bounce` (`type` bounce: hard, blocked:
soft), `dropped` (by `reason`: an address SendGrid already knows bad), `spamreport`,
`unsubscribe` and `group_unsubscribe`. `smtp-id` echoes our Message-ID; a custom argument
`dispatch_token` carries our token; `sg_event_id` is the event's id.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .reported import Kind, Reported, angle, short

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
TOKEN_ARG = "dispatch_token"
# `dropped` reasons that are about the address itself (others are about the message).
DROPPED: dict[str, Kind] = {
    "bounced address": "hard_bounce",
    "invalid": "hard_bounce",
    "spam reporting address": "complaint",
    "unsubscribed address": "unsubscribe",
}
EVENTS: dict[str, Kind] = {
    "spamreport": "complaint",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
}


class SendGridRefused(ValueError):
    """The request is not a fresh, genuinely signed SendGrid post; the text says why."""


def verify(
    key: ec.EllipticCurvePublicKey,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    max_age_s: int,
    now: float | None = None,
) -> None:
    if not signature or not timestamp:
        raise SendGridRefused(f"{SIGNATURE_HEADER} and {TIMESTAMP_HEADER} are required")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) < 20):
        raise SendGridRefused(f"{TIMESTAMP_HEADER} must be unix seconds")
    if abs((time.time() if now is None else now) - int(timestamp)) > max_age_s:
        raise SendGridRefused(f"{TIMESTAMP_HEADER} is older than {max_age_s} s (or ahead)")
    try:
        der = base64.b64decode(signature, validate=True)
        key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise SendGridRefused("the signature does not match the body") from None


def _kind(event: Mapping[str, Any]) -> Kind | None:
    name = event.get("event")
    if name == "bounce":
        return "soft_bounce" if event.get("type") == "blocked" else "hard_bounce"
    if name == "dropped":
        return DROPPED.get(str(event.get("reason", "")).strip().lower())
    return EVENTS.get(str(name))


def reported(events: Any) -> list[Reported]:
    """The events of a posted batch that say something about an address."""
    if not isinstance(events, list):
        raise SendGridRefused("the body must be a JSON array of events")
    out = []
    for event in events:
        if not isinstance(event, Mapping):
            continue
        kind, email, event_id = _kind(event), event.get("email"), event.get("sg_event_id")
        if kind is None or not isinstance(email, str) or not isinstance(event_id, str):
            continue
        smtp_id = event.get("smtp-id")
        token = event.get(TOKEN_ARG)
        out.append(Reported(
            "sendgrid", kind, email, f"sendgrid:{event_id}",
            (angle(smtp_id),) if isinstance(smtp_id, str) and smtp_id.strip() else (),
            token if isinstance(token, str) else None,
            short(event.get("reason") or event.get("status")),
        ))  # fmt: skip
    return out
