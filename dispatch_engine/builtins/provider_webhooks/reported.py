"""What a provider reported about one recipient of one email, before it is matched.

Each provider's module turns its payload into these; the shared route (routes.py) matches
each to its dispatch and hands it to the core feedback handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dispatch_engine.plugin import verp

Kind = Literal["hard_bounce", "soft_bounce", "complaint", "unsubscribe"]
MAX_DETAIL_CHARS = 500  # of a provider's diagnostic, kept with the event
MAX_EVENTS = 1000  # per request (SendGrid batches; the others post one event)


@dataclass(frozen=True)
class Reported:
    provider: str  # "ses", "sendgrid", "mailgun", "postmark"
    kind: Kind
    recipient: str
    fingerprint: str  # the provider's own event id: the same event twice is applied once
    message_ids: tuple[str, ...] = ()  # the Message-ID header(s) the provider echoed, <…>
    token: str | None = None  # a custom argument carrying our signed dispatch token
    detail: str = ""


def angle(message_id: str) -> str:
    """A Message-ID as our headers carry it, `<…>` (Mailgun and some others drop them)."""
    value = message_id.strip()
    if not value:
        return ""
    return value if value.startswith("<") and value.endswith(">") else f"<{value.strip('<>')}>"


def short(text: object) -> str:
    return str(text or "")[:MAX_DETAIL_CHARS]


def verp_token(envelope_sender: object) -> str | None:
    """The bounce token in a VERP envelope sender (`bounce+<token>@…`), if it is one."""
    return verp.token_of(envelope_sender) if isinstance(envelope_sender, str) else None
