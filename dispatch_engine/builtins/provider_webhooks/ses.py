"""Amazon SES notifications (inside SNS `Notification`s): bounces and complaints.

Shapes as AWS documents them ("Amazon SES notification contents",
https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html, and the event
publishing records, which say `eventType` where notifications say `notificationType`):
a `Bounce` of `bounceType` Permanent is a hard bounce, Transient a soft one (Undetermined
too: nothing proves the address dead); a `Complaint` is a complaint. The original
Message-ID is in `mail.commonHeaders.messageId` or `mail.headers` (SES includes headers
unless the identity turns that off), but SES replaces a Message-ID it is given ("Amazon SES
header fields"), so the match is mostly the token: a `dispatch_token` tag (`mail.tags`, event
publishing) or the VERP envelope sender `mail.source` (`bounce+<token>@…`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .reported import Kind, Reported, angle, short, verp_token

BOUNCE_KINDS: dict[str, Kind] = {"Permanent": "hard_bounce"}  # else soft_bounce
TOKEN_TAG = "dispatch_token"


def _message_ids(mail: Mapping[str, Any]) -> tuple[str, ...]:
    found = []
    common = mail.get("commonHeaders")
    if isinstance(common, Mapping) and isinstance(common.get("messageId"), str):
        found.append(angle(common["messageId"]))
    headers = mail.get("headers")
    for header in headers if isinstance(headers, list) else []:
        if (
            isinstance(header, Mapping)
            and str(header.get("name", "")).lower() == "message-id"
            and isinstance(header.get("value"), str)
        ):
            found.append(angle(header["value"]))
    return tuple(dict.fromkeys(m for m in found if m))


def _token(mail: Mapping[str, Any]) -> str | None:
    tags = mail.get("tags")
    values = tags.get(TOKEN_TAG) if isinstance(tags, Mapping) else None
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return verp_token(mail.get("source"))


def _recipients(block: Mapping[str, Any], key: str) -> list[str]:
    listed = block.get(key)
    if not isinstance(listed, list):
        return []
    out = []
    for entry in listed:
        if isinstance(entry, Mapping) and isinstance(entry.get("emailAddress"), str):
            out.append(entry["emailAddress"])
    return out


def reported(notification: Any, sns_message_id: str) -> list[Reported]:
    """The events an SES notification reports (other notification types report none)."""
    if not isinstance(notification, Mapping):
        return []
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail")
    mail = mail if isinstance(mail, Mapping) else {}
    ids, token = _message_ids(mail), _token(mail)
    if kind == "Bounce" and isinstance(notification.get("bounce"), Mapping):
        block = notification["bounce"]
        event_kind = BOUNCE_KINDS.get(str(block.get("bounceType")), "soft_bounce")
        recipients, detail = _recipients(block, "bouncedRecipients"), block.get("bounceSubType")
    elif kind == "Complaint" and isinstance(notification.get("complaint"), Mapping):
        block = notification["complaint"]
        event_kind = "complaint"
        recipients = _recipients(block, "complainedRecipients")
        detail = block.get("complaintFeedbackType")
    else:
        return []
    feedback_id = block.get("feedbackId")
    event_id = feedback_id if isinstance(feedback_id, str) and feedback_id else sns_message_id
    return [
        Reported(
            "ses",
            event_kind,
            recipient,
            f"ses:{event_id}:{recipient.lower()}",
            ids,
            token,
            short(detail),
        )
        for recipient in recipients
    ]
