"""SMTP transport (aiosmtplib): any server, Ethereal included, over a few reused connections.

When the server announces PIPELINING (RFC 2920; a sender's `pipelining: false` turns it
off), an email's MAIL, RCPT and DATA go in one write: two round trips per email instead of
four (`dispatch_engine.builtins.smtp.pipeline`); otherwise aiosmtplib sends them one at a time.

The login is ours, not aiosmtplib's: one mechanism is tried, and a refusal of the account
(535, 534, 530) stops there and raises `SenderAuthError`, which parks the sender after a
few (`dispatch_engine.sender_health`); sends that wait for a connection while a login of the
same account is refused get that refusal without trying again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import time
from typing import Any

import aiosmtplib

from dispatch_engine.plugin import (
    OutgoingMessage,
    PermanentError,
    PermanentReply,
    SenderAuthError,
    SenderRateLimitedError,
    SendResult,
    Settings,
    TransientError,
    TransportContext,
    TransportSpec,
    hookimpl,
    outbound,
    settings_of,
)

from .pipeline import PipelinedSession, ascii_envelope
from .settings import SmtpSettings

SETTINGS = SmtpSettings  # checked when the process starts

_RATE_WORDS = re.compile(r"rate|too many|throttl|limit|slow down|try again later", re.I)
# RFC 4954: 535 credentials invalid, 534 mechanism too weak (e.g. "app password required"),
# 530 authentication required: the account is refused, whatever the email.
ACCOUNT_REFUSED = (530, 534, 535)
# A refused login answers the sends that were waiting for a connection at that moment.
REFUSAL_SHARED_S = 2.0


def classify(code: int, message: str, stage: str | None = None) -> Exception:
    """Turn an SMTP reply into the error that tells the worker what to do; a 5xx to this
    email's MAIL, RCPT or DATA (`stage`) is a `PermanentReply` the bounce policy reads."""
    reply = f"{code} {message}".strip()
    if code in ACCOUNT_REFUSED:
        return SenderAuthError(f"the server refused the account: {reply}")
    if code in (421, 450, 451, 452) and _RATE_WORDS.search(message):
        return SenderRateLimitedError(f"server is limiting this sender: {reply}")
    if 400 <= code < 500:
        return TransientError(f"server answered {reply}")
    if stage is not None:
        return PermanentReply(f"server answered {reply}", code=code, reply=message, stage=stage)
    return PermanentError(f"server answered {reply}")


def _stage(exc: aiosmtplib.SMTPResponseException) -> str | None:
    """Which command of the email a refusal answered (None: the session, not the email)."""
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return "mail"
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return "rcpt"
    return "data" if isinstance(exc, aiosmtplib.SMTPDataError) else None


class SmtpTransport:
    """Keeps up to `pool_size` open connections, each used by one send at a time (pipelined
    sends queue on the least busy one)."""

    def __init__(self, context: TransportContext) -> None:
        settings = context.settings
        account = settings_of(SmtpSettings, settings)
        own: dict[str, Any] = dict(context.sender_settings)
        if "host" in own:  # the sender's own account: never mixed with the global one
            self.host: str = own["host"]
            self.port: int = int(own.get("port", 587))
            self.username: str | None = own.get("username")
            self.password: str | None = own.get("password")
            self.tls: str = own.get("tls", "starttls")
        else:  # the account of SMTP_* settings
            self.host = account.host
            self.port = account.port
            self.username = account.user
            self.password = account.password
            self.tls = account.tls
        self.timeout = float(own.get("timeout", 30))
        self.ca_file = account.ca_file
        self._tls_context: ssl.SSLContext | None = None
        self._login_lock = asyncio.Lock()
        self._refused: tuple[float, SenderAuthError] | None = None  # (monotonic time, error)
        # A sender's own host must be public (outbound.py); SMTP_HOST is the operator's.
        self._own_host = "host" in own
        self._allow_private = settings.private_targets_allowed
        self.pool_size = int(own.get("pool_size", account.pool_size))
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(self.pool_size)
        # None until the first connection says whether the server pipelines
        self._pipelined: bool | None = None if own.get("pipelining", True) else False
        self._sessions: list[PipelinedSession] = []
        self._opening = asyncio.Lock()

    def _tls(self) -> ssl.SSLContext:
        """The system's CAs, plus SMTP_CA_FILE's (a private CA), with host name checks."""
        if self._tls_context is None:
            context = ssl.create_default_context()
            if self.ca_file is not None:
                context.load_verify_locations(cafile=str(self.ca_file))
            self._tls_context = context
        return self._tls_context

    async def _connect(self) -> aiosmtplib.SMTP:
        """The one place that opens a connection to the server: TLS, EHLO, then our login."""
        asked = time.monotonic()
        async with self._login_lock:  # one login of this account at a time
            if self._refused is not None and self._refused[0] >= asked - REFUSAL_SHARED_S:
                raise SenderAuthError(str(self._refused[1]), attempted=False)
            sock = None
            if self._own_host:  # connect to an address just checked as public (DNS rebinding)
                sock = await outbound.open_socket(
                    self.host,
                    self.port,
                    allow_private=self._allow_private,
                    connect_timeout=self.timeout,
                )  # the host name stays the TLS server name
            client = aiosmtplib.SMTP(
                hostname=self.host,
                port=None if sock else self.port,
                sock=sock,
                use_tls=self.tls == "tls",
                start_tls=self.tls == "starttls",
                tls_context=self._tls() if self.tls != "none" else None,
                timeout=self.timeout,
            )
            try:
                await client.connect()
                if client.last_ehlo_response is None:  # connect() says EHLO only for TLS
                    await client.ehlo()
                await self._login(client)
            except SenderAuthError as exc:
                self._refused = (time.monotonic(), exc)
                await _close(client)
                raise
            except ssl.SSLCertVerificationError as exc:
                _close_socket(client, sock)
                raise TransientError(
                    f"{self.host}:{self.port}: its TLS certificate is not trusted "
                    f"({exc.verify_message}); for a private CA set SMTP_CA_FILE"
                ) from None
            except BaseException:
                _close_socket(client, sock)
                raise
            self._refused = None
            return client

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        """AUTH with the first mechanism both sides know; a refused account is not retried
        with another mechanism (a wrong password is wrong for all of them)."""
        if not self.username:
            return
        if not client.supports_extension("auth"):
            tls = " before TLS (use tls: starttls or tls)" if self.tls == "none" else ""
            raise SenderAuthError(f"{self.host}:{self.port} offers no AUTH{tls}")
        last: aiosmtplib.SMTPAuthenticationError | None = None
        for mechanism in client.supported_auth_methods:
            method = getattr(client, f"auth_{mechanism.replace('-', '')}")
            try:
                await method(self.username, self.password or "")
                return
            except aiosmtplib.SMTPAuthenticationError as exc:
                if exc.code in ACCOUNT_REFUSED:
                    raise SenderAuthError(
                        f"the server refused the login of {self.username!r}: "
                        f"{exc.code} {exc.message}"
                    ) from None
                if 400 <= exc.code < 500:  # 454: a temporary failure, not the password
                    raise TransientError(f"login: {exc.code} {exc.message}") from None
                last = exc  # e.g. 504: this mechanism is not offered after all; try the next
        detail = f": {last.code} {last.message}" if last else ""
        raise SenderAuthError(f"no login mechanism of {self.host} was accepted{detail}")

    async def send(self, message: OutgoingMessage) -> SendResult:
        if not self._one_at_a_time():
            try:
                session = await self._session()
            except aiosmtplib.SMTPResponseException as exc:  # e.g. 554 as a greeting
                raise classify(exc.code, exc.message) from None
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                raise TransientError(f"{self.host}:{self.port}: {exc}") from None
            if session is not None:
                return await self._send_pipelined(session, message)
        return await self._send_alone(message)

    async def _session(self) -> PipelinedSession | None:
        """The least busy pipelined connection, or a new one while all are busy and there are
        fewer than pool_size; None when the server does not pipeline."""
        while not self._one_at_a_time():
            self._sessions = live = [s for s in self._sessions if s.is_connected]
            best = min(live, key=_in_flight, default=None)
            if best is not None and (
                best.in_flight == 0 or len(live) >= self.pool_size or self._opening.locked()
            ):
                return best
            async with self._opening:
                live = [s for s in self._sessions if s.is_connected]
                if (
                    self._one_at_a_time()
                    or len(live) >= self.pool_size
                    or any(s.in_flight == 0 for s in live)
                ):
                    continue  # another send found out or opened one meanwhile: look again
                client = await self._connect()
                if not PipelinedSession.supported_by(client):
                    self._pipelined = False
                    self._idle.append(client)  # for _send_alone
                    return None
                self._pipelined = True
                session = PipelinedSession(client, self.timeout)
                self._sessions.append(session)
                return session
        return None

    def _one_at_a_time(self) -> bool:
        """The server does not pipeline (or the sender said not to)."""
        return self._pipelined is False

    async def _send_pipelined(
        self, session: PipelinedSession, message: OutgoingMessage
    ) -> SendResult:
        envelope = ascii_envelope(message, session.utf8)
        try:
            _refused, response = await session.send(
                envelope.mail_from, envelope.recipients, envelope.raw
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            raise classify(first.code, first.message, "rcpt") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise classify(exc.code, exc.message, _stage(exc)) from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise TransientError(f"{self.host}:{self.port}: {exc}") from None
        return SendResult(_with_preview(self.host, response))

    async def _send_alone(self, message: OutgoingMessage) -> SendResult:
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                envelope = ascii_envelope(message, client.supports_extension("smtputf8"))
                _refused, response = await client.sendmail(
                    envelope.mail_from,
                    envelope.recipients,
                    envelope.raw,
                    mail_options=["SMTPUTF8"] if envelope.utf8 else None,
                )
            except aiosmtplib.SMTPRecipientsRefused as exc:
                if client is not None and client.is_connected:
                    self._idle.append(client)  # a refused recipient leaves the session usable
                first = exc.recipients[0]
                raise classify(first.code, first.message, "rcpt") from None
            except aiosmtplib.SMTPResponseException as exc:
                await _close(client)
                raise classify(exc.code, exc.message, _stage(exc)) from None
            except PermanentError:
                if client is not None and client.is_connected:
                    self._idle.append(client)  # nothing was sent on it
                raise
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
        except SenderAuthError as exc:
            raise PermanentError(f"{where}: {exc}") from None
        except TransientError as exc:
            raise TransientError(f"cannot connect to {where}: {exc}") from None
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
        sessions, self._sessions = self._sessions, []
        for session in sessions:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await session.quit()
            session.close()


def _in_flight(session: PipelinedSession) -> int:
    return session.in_flight


def _with_preview(host: str, response: str) -> str:
    """Ethereal answers `250 Accepted [STATUS=new MSGID=…]`; its preview page has that id."""
    match = re.search(r"MSGID=([\w.@+-]+)", response)
    if match and host.endswith("ethereal.email"):
        return f"{response} preview: https://ethereal.email/message/{match.group(1)}"
    return response


def _close_socket(client: aiosmtplib.SMTP, sock: socket.socket | None) -> None:
    """A connection that failed before it was ours: drop it and the socket we opened."""
    client.close()
    if sock is not None:
        sock.close()


async def _close(client: aiosmtplib.SMTP | None) -> None:
    if client is not None and client.is_connected:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()


@hookimpl(trylast=True)
def register_transports(settings: Settings) -> list[TransportSpec]:
    return [TransportSpec("smtp", SmtpTransport, "SMTP via aiosmtplib (Ethereal, any server)")]
