"""Capture transport: keeps every message in PostgreSQL, the local inbox (`/api/inbox`).

Like a careful receiving server, it drops a resend of a Message-ID it already holds.
"""

from __future__ import annotations

from dispatch_engine.plugin import (
    OutgoingMessage,
    SendResult,
    Settings,
    TransientError,
    TransportContext,
    TransportSpec,
    hookimpl,
)


class CaptureTransport:
    def __init__(self, context: TransportContext) -> None:
        if context.db is None:
            raise ValueError("the capture transport needs the database pool")
        self.db = context.db

    async def send(self, message: OutgoingMessage) -> SendResult:
        try:
            captured_id = await self.db.fetchval(
                """INSERT INTO captured_messages
                       (owner_id, dispatch_id, message_id, mail_from, recipients, subject, raw)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (message_id) DO UPDATE
                       SET deliveries = captured_messages.deliveries + 1
                   RETURNING id""",
                message.owner_id,
                message.dispatch_id,
                message.message_id,
                message.mail_from,
                list(message.recipients),
                message.subject,
                message.raw,
            )
        except OSError as exc:
            raise TransientError(f"capture inbox unavailable: {exc}") from None
        return SendResult(f"250 captured as {captured_id}")

    async def close(self) -> None:
        return None


@hookimpl(trylast=True)
def register_transports(settings: Settings) -> list[TransportSpec]:
    return [TransportSpec("capture", CaptureTransport, "local inbox in PostgreSQL")]
