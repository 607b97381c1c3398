"""Postmark's webhooks: no signature, so HTTP Basic auth on the URL and an optional IP list.

Postmark puts the credentials of the webhook URL (`https://user:password@host/…`) in an
`Authorization: Basic` header ("Webhooks overview", https://postmarkapp.com/developer/webhooks/webhooks-overview).
Records, as its docs show them: "Bounce webhook" (`Type` HardBounce, BadEmailAddress…:
hard; SoftBounce, Transient, DnsError…: soft; others such as AutoResponder report nothing),
"Spam complaint webhook" (`RecordType` SpamComplaint) and "Subscription change webhook"
(`SuppressSending` true: by `SuppressionReason`, ManualSuppression from the Recipient being an
unsubscribe). Postmark's `MessageID` is its own, so the match is the `dispatch_token`
metadata (`X-PM-Metadata-dispatch_token` on SMTP) or the Message-ID in the bounce `Content`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from .reported import Kind, Reported, angle, short
from .settings import Network

TOKEN_METADATA = "dispatch_token"
HARD = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "Blocked"})
SOFT = frozenset({"SoftBounce", "Transient", "DnsError", "Unknown", "SMTPApiError"})
SUPPRESSIONS: dict[str, Kind] = {"HardBounce": "hard_bounce", "SpamComplaint": "complaint"}
_MESSAGE_ID = re.compile(r"(?im)^Message-ID:\s*(<[^<>\s]{1,250}>)")


class PostmarkRefused(ValueError):
    """Not Postmark's post (wrong credentials or address); the text says why."""


def check_credentials(header: str | None, expected: tuple[str, str]) -> None:
    scheme, _, encoded = (header or "").partition(" ")
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        given = b""
    wanted = f"{expected[0]}:{expected[1]}".encode()
    # Both compared whatever the scheme says, so the answer takes the same time.
    if not hmac.compare_digest(given, wanted) or scheme.lower() != "basic":
        raise PostmarkRefused("the webhook's Basic auth credentials are wrong")


def check_address(remote: str | None, allowed: tuple[Network, ...]) -> None:
    if not allowed:
        return
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        address = None
    if address is None or not any(address in network for network in allowed):
        raise PostmarkRefused("this address may not post Postmark webhooks")


def _kind(record: Mapping[str, Any]) -> Kind | None:
    record_type = record.get("RecordType")
    if record_type == "SpamComplaint":
        return "complaint"
    if record_type == "Bounce":
        bounce_type = record.get("Type")
        return "hard_bounce" if bounce_type in HARD else "soft_bounce" if bounce_type in SOFT \
            else None  # fmt: skip
    if record_type == "SubscriptionChange" and record.get("SuppressSending") is True:
        reason = str(record.get("SuppressionReason"))
        if reason == "ManualSuppression" and record.get("Origin") == "Recipient":
            return "unsubscribe"
        return SUPPRESSIONS.get(reason)
    return None


def reported(record: Any) -> list[Reported]:
    if not isinstance(record, Mapping):
        raise PostmarkRefused("the body must be a JSON object (one Postmark record)")
    kind = _kind(record)
    email = record.get("Email") or record.get("Recipient")
    if kind is None or not isinstance(email, str):
        return []
    if record.get("RecordType") == "SubscriptionChange":
        event_id = f"change:{record.get('MessageID')}:{record.get('ChangedAt')}:{email.lower()}"
    elif isinstance(record.get("ID"), int):
        event_id = str(record["ID"])
    else:
        return []
    metadata = record.get("Metadata")
    token = metadata.get(TOKEN_METADATA) if isinstance(metadata, Mapping) else None
    content = record.get("Content")
    ids = _MESSAGE_ID.findall(content) if isinstance(content, str) else []
    return [Reported(
        "postmark", kind, email, f"postmark:{event_id}",
        tuple(dict.fromkeys(angle(i) for i in ids)), token if isinstance(token, str) else None,
        short(record.get("Description") or record.get("SuppressionReason")),
    )]  # fmt: skip
