"""SMTP transport (aiosmtplib): any server, Ethereal included, over a few reused connections."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiosmtplib

from dispatch_engine import hookimpl
from dispatch_engine.config import Settings
from dispatch_engine.transport import (
    OutgoingMessage,
    PermanentError,
    SenderRateLimitedError,
    SendResult,
    TransientError,
    TransportContext,
    TransportSpec,
)

_RATE_WORDS = re.compile(r"rate|too many|throttl|limit|slow down|try again later", re.I)


def classify(code: int, message: str) -> Exception:
    """Turn an SMTP reply into the error that tells the worker what to do."""
    reply = f"{code} {message}".strip()
    if code in (421, 450, 451, 452) and _RATE_WORDS.search(message):
        return SenderRateLimitedError(f"server is limiting this sender: {reply}")
    if 400 <= code < 500:
        return TransientError(f"server answered {reply}")
    return PermanentError(f"server answered {reply}")


class SmtpTransport:
    """Keeps up to `pool_size` open connections and hands one to each send."""

    def __init__(self, context: TransportContext) -> None:
        settings = context.settings
        own: dict[str, Any] = dict(context.sender_settings)
        if "host" in own:  # the sender's own account: never mixed with the global one
            self.host: str = own["host"]
            self.port: int = int(own.get("port", 587))
            self.username: str | None = own.get("username")
            self.password: str | None = own.get("password")
            self.tls: str = own.get("tls", "starttls")
        else:  # the account of SMTP_* settings
            self.host = settings.smtp_host
            self.port = settings.smtp_port
            self.username = settings.smtp_user
            self.password = settings.smtp_password
            self.tls = settings.smtp_tls
        self.timeout = float(own.get("timeout", 30))
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(int(own.get("pool_size", settings.smtp_pool_size)))

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.tls == "tls",
            start_tls=self.tls == "starttls",
            timeout=self.timeout,
        )
        await client.connect()
        return client

    async def send(self, message: OutgoingMessage) -> SendResult:
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                _refused, response = await client.sendmail(
                    message.mail_from, list(message.recipients), message.raw
                )
            except aiosmtplib.SMTPRecipientsRefused as exc:
                if client is not None and client.is_connected:
                    self._idle.append(client)  # a refused recipient leaves the session usable
                first = exc.recipients[0]
                raise classify(first.code, first.message) from None
            except aiosmtplib.SMTPResponseException as exc:
                await _close(client)
                raise classify(exc.code, exc.message) from None
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                await _close(client)
                raise TransientError(f"{self.host}:{self.port}: {exc}") from None
            self._idle.append(client)
            return SendResult(_with_preview(self.host, response))

    async def check(self) -> str:
        """Connect, negotiate TLS and log in, and say what happened (for `sender test`)."""
        where = f"{self.host}:{self.port}"
        try:
            client = await self._connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise PermanentError(
                f"{where} refused the login of {self.username!r}: {exc.code} {exc.message}"
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise PermanentError(f"{where} answered {exc.code} {exc.message}") from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise TransientError(f"cannot connect to {where}: {exc}") from None
        tls = {"tls": "implicit TLS", "starttls": "STARTTLS", "none": "no TLS"}[self.tls]
        auth = f"logged in as {self.username}" if self.username else "no login configured"
        await _close(client)
        return f"connected to {where} ({tls}), {auth}"

    async def close(self) -> None:
        while self._idle:
            await _close(self._idle.pop())


def _with_preview(host: str, response: str) -> str:
    """Ethereal answers `250 Accepted [STATUS=new MSGID=…]`; its preview page has that id."""
    match = re.search(r"MSGID=([\w.@+-]+)", response)
    if match and host.endswith("ethereal.email"):
        return f"{response} preview: https://ethereal.email/message/{match.group(1)}"
    return response


async def _close(client: aiosmtplib.SMTP | None) -> None:
    if client is not None and client.is_connected:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()


@hookimpl(trylast=True)
def register_transports(settings: Settings) -> list[TransportSpec]:
    return [TransportSpec("smtp", SmtpTransport, "SMTP via aiosmtplib (Ethereal, any server)")]
