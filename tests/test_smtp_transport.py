"""The SMTP transport: its reading of server replies, and pipelined or one-at-a-time sends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from dispatch_engine.builtins import smtp
from dispatch_engine.config import load_settings
from dispatch_engine.transport import (
    OutgoingMessage,
    PermanentError,
    SenderAuthError,
    SenderRateLimitedError,
    TransientError,
    TransportContext,
)

from .support.smtp_peer import SmtpPeer
from .support.smtp_sink import free_port


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        (421, "4.7.0 Too many messages, slow down", SenderRateLimitedError),
        (451, "4.7.1 Rate limit exceeded, try again later", SenderRateLimitedError),
        (451, "4.3.0 Local error in processing", TransientError),
        (452, "4.2.2 Mailbox full", TransientError),
        (535, "5.7.8 Authentication credentials invalid", SenderAuthError),
        (534, "5.7.9 Application-specific password required", SenderAuthError),
        (530, "5.7.0 Authentication required", SenderAuthError),
        (550, "5.1.1 No such user", PermanentError),
        (554, "5.7.1 Message rejected as spam", PermanentError),
    ],
)
def test_replies_are_classified(code: int, message: str, kind: type[Exception]) -> None:
    error = smtp.classify(code, message)
    assert type(error) is kind
    assert f"{code} {message}" in str(error), "the server's reply is kept word for word"


def test_ethereal_replies_keep_their_preview_link() -> None:
    reply = "250 Accepted [STATUS=new MSGID=Yh7kN2Q.abc-123@ethereal.email]"
    assert smtp._with_preview("smtp.ethereal.email", reply).endswith(
        "preview: https://ethereal.email/message/Yh7kN2Q.abc-123@ethereal.email"
    )
    assert smtp._with_preview("smtp.example.com", reply) == reply


# ---- pipelining (RFC 2920) against a real server ----


class PipeliningSink:
    """aiosmtpd handler: records messages, refuses some recipients, may announce PIPELINING."""

    def __init__(self, pipelining: bool) -> None:
        self.pipelining = pipelining
        self.messages: list[tuple[list[str], bytes]] = []
        self.refuse = {"nobody@example.com": "550 5.1.1 No such user",
                       "later@example.com": "451 4.3.0 Try again"}  # fmt: skip
        self.sessions = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        self.sessions += 1
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 queued"


def _message(i: int, to: str, body: bytes) -> OutgoingMessage:
    raw = b"From: a@example.com\r\nTo: " + to.encode() + b"\r\nMessage-ID: <%d@x>\r\n\r\n" % i
    return OutgoingMessage(i, 1, "a@example.com", (to,), f"<{i}@x>", "s", raw + body)


@pytest.mark.parametrize("pipelining", [True, False])
async def test_concurrent_sends_arrive_intact_over_few_connections(pipelining: bool) -> None:
    handler = PipeliningSink(pipelining)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    opened = handler.sessions  # the controller's own check of its server
    own = {"host": "127.0.0.1", "port": controller.port, "tls": "none", "pool_size": 2}
    transport = smtp.SmtpTransport(TransportContext(load_settings({}), own))
    # dot-stuffing, a lone "." line and bare LFs must survive the pipelined DATA
    bodies = [b"line\r\n.starts with a dot\r\n.\r\nend %d\r\n" % i for i in range(40)]
    bodies[3] = b"bare\nline feeds\n.\nend 3"
    try:
        results = await asyncio.gather(
            *(transport.send(_message(i, f"r{i}@example.com", b)) for i, b in enumerate(bodies))
        )
        with pytest.raises(PermanentError, match=r"550 5\.1\.1"):
            await transport.send(_message(100, "nobody@example.com", b"x\r\n"))
        with pytest.raises(TransientError, match=r"451 4\.3\.0"):
            await transport.send(_message(101, "later@example.com", b"x\r\n"))
        after = await transport.send(_message(102, "r102@example.com", b"still works\r\n"))
    finally:
        await transport.close()
        controller.stop()
    assert all("queued" in r.response for r in [*results, after])
    assert transport._pipelined is pipelining
    assert handler.sessions - opened <= 2, "the pool's size bounds the connections"
    got = {rcpts[0]: content for rcpts, content in handler.messages}
    assert len(handler.messages) == 41, "each email once; the refused ones not at all"
    for i, body in enumerate(bodies):
        expected = body.replace(b"\r\n", b"\n").removesuffix(b"\n").replace(b"\n", b"\r\n")
        assert got[f"r{i}@example.com"].endswith(b"\r\n\r\n" + expected + b"\r\n")


def test_pipelining_works_on_uvloop_too() -> None:
    """uvloop's transports are not asyncio.Transport subclasses: pipelining must not care."""
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(test_concurrent_sends_arrive_intact_over_few_connections(True))


class SlowSink(PipeliningSink):
    """Takes PROCESSING_S to accept each message (the server's own work, not a wait)."""

    PROCESSING_S = 0.4

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.PROCESSING_S)
        return await super().handle_DATA(server, session, envelope)


async def test_waiting_for_a_busy_connection_does_not_count_against_the_send_timeout() -> None:
    # One connection, three sends: the last waits ~0.8 s for its turn, longer than the 0.7 s
    # timeout. Each send's own exchange takes ~0.4 s, so every one must arrive, on the one
    # connection.
    handler = SlowSink(pipelining=True)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    opened = handler.sessions
    own = {"host": "127.0.0.1", "port": controller.port, "tls": "none", "pool_size": 1,
           "timeout": 0.7}  # fmt: skip
    transport = smtp.SmtpTransport(TransportContext(load_settings({}), own))
    try:
        results = await asyncio.gather(
            *(transport.send(_message(i, f"r{i}@example.com", b"x\r\n")) for i in range(3))
        )
    finally:
        await transport.close()
        controller.stop()
    assert all("queued" in r.response for r in results)
    assert len(handler.messages) == 3 and handler.sessions - opened == 1


async def test_a_sender_can_turn_pipelining_off() -> None:
    handler = PipeliningSink(pipelining=True)  # the server offers it; the sender declines
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    own = {"host": "127.0.0.1", "port": controller.port, "tls": "none", "pipelining": False}
    transport = smtp.SmtpTransport(TransportContext(load_settings({}), own))
    try:
        sent = await transport.send(_message(1, "r1@example.com", b"x\r\n"))
    finally:
        await transport.close()
        controller.stop()
    assert "queued" in sent.response and len(handler.messages) == 1
    assert transport._pipelined is False and transport._sessions == []


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_refused_login_is_tried_once_for_all_sends_waiting_on_it(pipelining: bool) -> None:
    """Twenty sends at once with a wrong password: one AUTH PLAIN at the server (no LOGIN
    after it, no login per send); every send learns the refusal, and only the first counts it."""
    with SmtpPeer(users={"ops": "right"}, pipelining=pipelining) as peer:
        own = {"host": "127.0.0.1", "port": peer.port, "tls": "none", "username": "ops",
               "password": "wrong", "pool_size": 4}  # fmt: skip
        transport = smtp.SmtpTransport(TransportContext(load_settings({}), own))
        try:
            results = await asyncio.gather(
                *(transport.send(_message(i, f"r{i}@example.com", b"x\r\n")) for i in range(20)),
                return_exceptions=True,
            )
        finally:
            await transport.close()
    assert all(isinstance(r, SenderAuthError) for r in results), results
    assert "535 5.7.8 Authentication credentials invalid" in str(results[0])
    assert [r.attempted for r in results if isinstance(r, SenderAuthError)].count(True) == 1
    assert [(e["method"], e["ok"]) for e in peer.logins()] == [("PLAIN", False)]
