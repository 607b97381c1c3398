"""What a transport plugin implements, and the errors that tell the worker what to do next."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from .config import Settings


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


class TransientError(TransportError):
    """Try again later (4xx reply, connection lost, timeout)."""


class PermanentError(TransportError):
    """Never retry this email (5xx reply, invalid recipient); the reason is kept."""


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
    """Transports by name (from `register_transports`), one live instance per sender."""

    def __init__(self, specs: list[TransportSpec], settings: Settings, db: asyncpg.Pool) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.settings = settings
        self.db = db
        self._live: dict[int, Transport] = {}

    def for_sender(self, sender_id: int, name: str, own_settings: Mapping[str, Any]) -> Transport:
        live = self._live.get(sender_id)
        if live is None:
            spec = self.specs.get(name)
            if spec is None:
                known = ", ".join(sorted(self.specs)) or "none"
                raise PermanentError(f"no transport named {name!r} is installed (have: {known})")
            live = spec.factory(TransportContext(self.settings, own_settings, self.db))
            self._live[sender_id] = live
        return live

    async def close(self) -> None:
        for transport in self._live.values():
            await transport.close()
        self._live.clear()
