"""What a transport plugin implements, and the errors that tell the worker what to do next."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Protocol

import asyncpg

from .config import Settings
from .models import Sender
from .secretbox import SecretBox, SecretError


@dataclass(frozen=True)
class OutgoingMessage:
    """One rendered email: `raw` is the full RFC 5322 message with CRLF line endings."""

    dispatch_id: int
    owner_id: int
    mail_from: str
    recipients: tuple[str, ...]
    message_id: str
    subject: str
    raw: bytes


@dataclass(frozen=True)
class SendResult:
    response: str = ""  # the server's reply, kept in the ledger


class TransportError(Exception):
    """Base of what `Transport.send` raises; the subclass decides retry or fail."""

    failure_code: str | None = None  # a sender test's short code for it (outbound.py)


class TransientError(TransportError):
    """Try again later (4xx reply, connection lost, timeout)."""


class PermanentError(TransportError):
    """Never retry this email (5xx reply, invalid recipient); the reason is kept."""


# RFC 3463 (RFC 2034 carries it in SMTP replies): class.subject.detail after the basic code.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?!\S)")


class PermanentReply(PermanentError):
    """The server refused this email for good with an SMTP reply: `code` (550), the RFC 3463
    `enhanced` status when the reply opens with one ("5.1.1"), and the `stage` it came at
    ("mail", "rcpt" or "data"). Whether it is a hard bounce (the address is bad) or a
    failure that is not the recipient's (policy, size, our syntax) is the feedback policy's
    call (`dispatch_engine.consent.smtp_status`)."""

    def __init__(self, message: str, *, code: int, reply: str, stage: str) -> None:
        super().__init__(message)
        self.code = code
        self.stage = stage
        found = _ENHANCED.match(reply.strip())
        # RFC 3463 §2: the class must agree with the basic code's first digit, else ignore it.
        self.enhanced = found.group(0) if found and found.group(1) == str(code)[:1] else None


class SenderAuthError(TransportError):
    """The server refused the account itself (RFC 4954: 535, 534, 530): every email of this
    sender would fail the same way. The worker counts it and parks the sender; the email waits
    and keeps its attempts. `attempted` is false when the transport did not try to log in
    again because a login of the same account had just been refused."""

    def __init__(self, message: str, *, attempted: bool = True) -> None:
        super().__init__(message)
        self.attempted = attempted


class SenderRateLimitedError(TransientError):
    """The provider says the sender is sending too fast: park the sender, keep the email."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # None: the worker's backoff decides


class Transport(Protocol):
    async def send(self, message: OutgoingMessage) -> SendResult: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class TransportContext:
    """What a transport factory receives: global settings, the sender's own settings, the DB."""

    settings: Settings
    sender_settings: Mapping[str, Any] = field(default_factory=dict)
    db: asyncpg.Pool | None = None


TransportFactory = Callable[[TransportContext], Transport]


@dataclass(frozen=True)
class TransportSpec:
    """Returned by `register_transports`: a name users configure and a factory."""

    name: str
    factory: TransportFactory
    description: str = ""


class TransportRegistry:
    """Transports by name (from `register_transports`), one live instance per sender.

    A sender's stored settings are opened here (sealed passwords decrypted) and nowhere
    else; when a sender's settings change, its transport is rebuilt.
    """

    def __init__(
        self, specs: list[TransportSpec], settings: Settings, db: asyncpg.Pool, box: SecretBox
    ) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.settings = settings
        self.db = db
        self.box = box
        self._live: dict[int, tuple[Sender, Transport]] = {}

    def _build(self, sender: Sender) -> Transport:
        spec = self.specs.get(sender.transport)
        if spec is None:
            known = ", ".join(sorted(self.specs)) or "none"
            raise PermanentError(
                f"no transport named {sender.transport!r} is installed (have: {known})"
            )
        own = dict(sender.transport_settings)
        if isinstance(own.get("password"), str):
            try:
                own["password"] = self.box.open(own["password"])
            except SecretError as exc:
                raise PermanentError(str(exc)) from None
        return spec.factory(TransportContext(self.settings, own, self.db))

    async def for_sender(self, sender: Sender) -> Transport:
        live = self._live.get(sender.id)
        if live is not None and (live[0] is sender or live[0] == sender):  # `is`: no field compare
            return live[1]
        if live is not None:  # the sender was edited: new settings, new connections
            await live[1].close()
        transport = self._build(sender)
        self._live[sender.id] = (sender, transport)
        return transport

    async def check(self, sender: Sender, send_test_to: str | None = None) -> dict[str, Any]:
        """Try a sender's account without touching the live transports; never raises.

        A failure answers a short code and our own words (`outbound.describe_failure`),
        never the remote's reply or banner: a user must not read other servers through it.
        """
        from .outbound import describe_failure, target_of  # outbound imports this module

        try:
            transport = self._build(sender)
        except TransportError as exc:  # our own words: nothing was contacted
            return {"ok": False, "error": "settings", "message": str(exc)}
        try:
            check = getattr(transport, "check", None)
            detail = await check() if check is not None else "this transport has no check"
            result: dict[str, Any] = {"ok": True, "message": detail}
            if send_test_to:
                message = test_message(sender, send_test_to)
                await transport.send(message)
                result["test_message"] = {"to": send_test_to, "message_id": message.message_id}
            return result
        except Exception as exc:  # any failure becomes a classified answer
            return describe_failure(exc, target_of(sender.transport, sender.transport_settings))
        finally:
            await transport.close()

    async def close(self) -> None:
        for _, transport in self._live.values():
            await transport.close()
        self._live.clear()


def test_message(sender: Sender, to: str) -> OutgoingMessage:
    """A small plain message that proves a sender works end to end."""
    domain = sender.from_address.rpartition("@")[2] or "dispatch-engine.local"
    message_id = f"<test-{secrets.token_hex(12)}@{domain}>"
    raw = (
        f"From: {sender.from_address}\r\nTo: {to}\r\n"
        f"Subject: Dispatch Engine test from {sender.from_address}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\nMessage-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "This sender works: Dispatch Engine reached your mail server with it.\r\n"
    ).encode()
    return OutgoingMessage(0, sender.owner_id, sender.from_address, (to,), message_id,
                           "Dispatch Engine test", raw)  # fmt: skip
