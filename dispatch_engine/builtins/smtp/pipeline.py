"""SMTP PIPELINING (RFC 2920) over a connection aiosmtplib opened: fewer round trips per email.

aiosmtplib sends each command and waits for its reply: MAIL, RCPT, DATA, then the content,
four round trips per email. When the server announces PIPELINING, a `PipelinedSession` takes
the connection over once aiosmtplib has done the greeting, EHLO, STARTTLS and AUTH: it writes
MAIL, RCPT and DATA at once, then the content: two round trips per email instead of four,
one email at a time per connection.

Replies come back in the order the commands were written; each waits in a FIFO of futures.
A send that stops halfway through its envelope or content (cancelled, timed out) closes the
connection: what the server would read next is no longer known.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import NamedTuple, cast

import aiosmtplib
from aiosmtplib.email import parse_address
from email_validator import EmailNotValidError, validate_email

from dispatch_engine.plugin import OutgoingMessage, PermanentError

_BARE_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")


class Envelope(NamedTuple):
    mail_from: str
    recipients: list[str]
    raw: bytes
    utf8: bool  # MAIL FROM needs the SMTPUTF8 parameter


def _ascii_address(address: str) -> str:
    """`local@domain` with an IDN domain as its A-label; PermanentError for a unicode local
    part, which only SMTPUTF8 (RFC 6531) can carry."""
    try:
        parsed = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise PermanentError(f"invalid address {address!r}: {exc}") from None
    if parsed.ascii_email is None:
        raise PermanentError(
            f"the server does not support SMTPUTF8 (RFC 6531), which {address!r} needs "
            "for its non-ASCII local part"
        )
    return str(parsed.ascii_email)


def ascii_envelope(message: OutgoingMessage, server_utf8: bool) -> Envelope:
    """The envelope as this server can take it. With SMTPUTF8, addresses go as they are;
    without it, IDN domains go as A-labels (envelope and the header lines that name them)
    and a unicode local part fails at once: no retry can change it."""
    addresses = [message.mail_from, *message.recipients]
    if all(a.isascii() for a in addresses):
        return Envelope(message.mail_from, list(message.recipients), message.raw, False)
    if server_utf8:
        return Envelope(message.mail_from, list(message.recipients), message.raw, True)
    mapping = {a: _ascii_address(a) for a in addresses if not a.isascii()}
    raw = message.raw
    end = raw.find(b"\r\n\r\n")
    head, body = (raw[:end], raw[end:]) if end >= 0 else (raw, b"")
    for unicode_form, ascii_form in mapping.items():
        head = head.replace(unicode_form.encode(), ascii_form.encode())
    return Envelope(
        mapping.get(message.mail_from, message.mail_from),
        [mapping.get(r, r) for r in message.recipients],
        head + body,
        False,
    )


class Reply(NamedTuple):
    code: int
    message: str


def message_data(raw: bytes) -> bytes:
    """The DATA payload of a message: CRLF line endings, dot-stuffed, ended by CRLF.CRLF."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
        raw = _BARE_LINE_END.sub(b"\r\n", raw)
    if b"\r\n." in raw:
        raw = raw.replace(b"\r\n.", b"\r\n..")
    if raw.startswith(b"."):
        raw = b"." + raw
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    return raw + b".\r\n"


def _address(address: str) -> tuple[bytes, bool]:
    """`<address>` for MAIL/RCPT, and whether it needs SMTPUTF8."""
    if address.isascii() and address.isprintable() and not any(c in address for c in " <>"):
        return b"<" + address.encode() + b">", False
    parsed = parse_address(address)  # ValueError on CR, LF and the like
    return b"<" + parsed.encode() + b">", not parsed.isascii()


class PipelinedSession(asyncio.Protocol):
    """One SMTP connection with emails pipelined on it (the server announced PIPELINING)."""

    def __init__(self, client: aiosmtplib.SMTP, timeout: float) -> None:
        if not self.supported_by(client):
            raise aiosmtplib.SMTPServerDisconnected("not connected, or no PIPELINING")
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        transport = cast(asyncio.Transport, client.transport)
        self._transport = transport
        self.timeout = timeout
        self._size = client.supports_extension("size")
        self._utf8 = client.supports_extension("smtputf8")
        self._replies: deque[asyncio.Future[Reply] | None] = deque()  # None: reply ignored
        self._buffer = bytearray()
        self._turn = asyncio.Lock()  # held from an envelope's write to its content's
        self._lost: Exception | None = None
        self.in_flight = 0
        transport.set_protocol(self)

    @classmethod
    def supported_by(cls, client: aiosmtplib.SMTP) -> bool:
        transport = client.transport
        return (
            client.supports_extension("pipelining")
            and transport is not None
            and hasattr(transport, "set_protocol")
            and hasattr(transport, "write")
        )

    @property
    def utf8(self) -> bool:
        """The server announced SMTPUTF8."""
        return self._utf8

    @property
    def is_connected(self) -> bool:
        return self._lost is None and not self._transport.is_closing()

    # ---- asyncio.Protocol ----

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            reply = self._next_reply()
            if reply is None:
                return
            if self._replies:
                waiter = self._replies.popleft()
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
            elif reply.code == 421:  # the server is closing the session
                self._fail(aiosmtplib.SMTPServerDisconnected(reply.message))
                self._transport.close()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("unexpected EOF"))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected(f"connection lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        if self._lost is None:
            self._lost = exc
        while self._replies:
            waiter = self._replies.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()  # retrieved: nobody may be left to await it

    def _next_reply(self) -> Reply | None:
        """Take one complete (possibly multi-line) reply off the buffer."""
        buf = self._buffer
        start = 0
        lines: list[bytes] = []
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                return None
            line = bytes(buf[start:end]).rstrip(b"\r")
            start = end + 1
            lines.append(line[4:])
            if line[3:4] != b"-":
                break
        del buf[:start]
        try:
            code = int(line[:3])
        except ValueError:
            code = -1  # a malformed reply; the send that gets it fails
        return Reply(code, b"\n".join(lines).decode("utf-8", "surrogateescape").strip())

    # ---- sending ----

    def _write(self, data: bytes, replies: int) -> list[asyncio.Future[Reply]]:
        if self._lost is not None:
            raise self._lost
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in range(replies)]
        self._replies.extend(waiters)
        self._transport.write(data)
        return waiters

    def _write_ignored(self, data: bytes, replies: int) -> None:
        if self._lost is None:
            self._replies.extend([None] * replies)
            self._transport.write(data)

    async def send(
        self, mail_from: str, recipients: list[str], raw: bytes
    ) -> tuple[dict[str, Reply], str]:
        """One email: (refused recipients, the server's final reply); raises aiosmtplib's
        SMTPResponseException subclasses on refusals, SMTPServerDisconnected, TimeoutError."""
        data = message_data(raw)
        sender, utf8 = _address(mail_from)
        rcpts = [_address(r) for r in recipients]
        options = b" SIZE=%d" % len(data) if self._size else b""
        if utf8 or any(u for _, u in rcpts):
            if not self._utf8:
                raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
            options += b" SMTPUTF8"
        envelope = b"".join(
            [b"MAIL FROM:" + sender + options + b"\r\n"]
            + [b"RCPT TO:" + r + b"\r\n" for r, _ in rcpts]
            + [b"DATA\r\n"]
        )
        self.in_flight += 1
        try:
            # The timeout starts with the turn: a send that waited long for the connection
            # gives up without closing it under the email in progress.
            async with self._turn, asyncio.timeout(self.timeout):
                reply, refused = await self._transaction(envelope, recipients, data)
        finally:
            self.in_flight -= 1
        if reply.code != 250:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        return refused, reply.message

    async def _transaction(
        self, envelope: bytes, recipients: list[str], data: bytes
    ) -> tuple[Reply, dict[str, Reply]]:
        """Write the envelope, read its replies, write the content, read the final reply:
        (the final reply, the refused recipients). Two round trips.

        The caller holds the turn throughout. The next email's envelope could go right after
        this content (RFC 2920 allows it), but measured into Postfix's smtp-sink that stalls:
        the server's two small replies in a row meet Nagle's algorithm and the client's delayed
        ACK (1,500 emails/s over 8 connections, against 9,300 one email per connection)."""
        try:
            waiters = self._write(envelope, len(recipients) + 2)
            await waiters[-1]  # replies arrive in order: all are in
            mail, *rcpt, data_reply = [w.result() for w in waiters]
            refused = {
                r: reply for r, reply in zip(recipients, rcpt, strict=True) if reply.code >= 300
            }
            everyone = len(refused) == len(recipients)
            if data_reply.code != 354 or mail.code >= 300 or everyone:
                # A 354 despite a refusal: end an empty message. Then reset the envelope.
                end = b".\r\n" if data_reply.code == 354 else b""
                self._write_ignored(end + b"RSET\r\n", 2 if end else 1)
                raise _refusal(mail, refused if everyone else {}, data_reply)
            (final,) = self._write(data, 1)
            return await final, refused
        except (asyncio.CancelledError, TimeoutError):
            self.close()  # stopped between envelope and content: unusable
            raise

    def close(self) -> None:
        if not self._transport.is_closing():
            self._transport.close()
        self._fail(aiosmtplib.SMTPServerDisconnected("closed"))

    async def quit(self) -> None:
        """QUIT after the emails in flight, then close."""
        if self.is_connected:
            async with self._turn:
                self._write_ignored(b"QUIT\r\n", 1)
        self.close()


def _refusal(mail: Reply, refused: dict[str, Reply], data: Reply) -> Exception:
    """What aiosmtplib's sendmail raises for the same replies (`refused`: when all were)."""
    if mail.code >= 300:
        return aiosmtplib.SMTPSenderRefused(mail.code, mail.message, "")
    if refused:  # every recipient
        errors = [
            aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, rcpt)
            for rcpt, reply in refused.items()
        ]
        return aiosmtplib.SMTPRecipientsRefused(errors)
    return aiosmtplib.SMTPDataError(data.code, data.message)
