"""Outbound targets at unit level: which addresses are public, the failure codes of a sender
test, the setting's default, and refusals that happen before any connection is attempted.

Nothing here connects anywhere (the loopback listener proves that nothing arrived).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import aiosmtplib
import pytest

from dispatch_engine import outbound
from dispatch_engine.builtins import smtp, webhook
from dispatch_engine.config import Settings, SettingsError, load_settings
from dispatch_engine.transport import OutgoingMessage, PermanentError, TransportContext

from .test_outbound import SECRET_TEXT, Listener


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    async with Listener() as probe:
        yield probe


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
     "100.64.0.1", "0.0.0.0", "224.0.0.251", "255.255.255.255", "192.0.2.1", "198.18.0.1",
     "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1",
     "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "2002:7f00:1::1",
     "2002:a9fe:a9fe::1", "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "2001:db8::1"],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not outbound.is_public(ipaddress.ip_address(address))
    with pytest.raises(outbound.NotPublicError):
        outbound.check_address("x", address, allow_private=False)
    outbound.check_address("x", address, allow_private=True)  # the operator's choice


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert outbound.is_public(ipaddress.ip_address(address))


async def test_one_private_answer_among_public_ones_refuses_the_host(listener: Listener) -> None:
    async def mixed(host: str, port: int, family: int = 0) -> list[str]:
        return ["8.8.8.8", "127.0.0.1"]

    previous = outbound.set_resolver(mixed)
    try:
        transport = webhook.WebhookTransport(
            TransportContext(
                Settings(allow_private_targets=False),
                {"url": f"http://localhost:{listener.port}/", "password": "s"},
            )
        )
        with pytest.raises(outbound.NotPublicError):
            await transport.check()
        await transport.close()
        with pytest.raises(outbound.NotPublicError):
            await outbound.open_socket(
                "localhost", listener.port, allow_private=False, connect_timeout=5
            )
    finally:
        outbound.set_resolver(previous)
    assert listener.connections == 0


def test_the_failure_codes() -> None:
    where = "mx.example.com:25"
    cases: list[tuple[BaseException, str]] = [
        (aiosmtplib.SMTPAuthenticationError(535, SECRET_TEXT), "auth_failed"),
        (aiosmtplib.SMTPResponseException(554, SECRET_TEXT), "smtp_554"),
        (aiosmtplib.SMTPTimeoutError(SECRET_TEXT), "timeout"),
        (ConnectionRefusedError(SECRET_TEXT), "refused"),
        (outbound.NotPublicError(SECRET_TEXT), "not_public"),
        (RuntimeError(SECRET_TEXT), "failed"),
    ]
    for error, code in cases:
        try:  # as the transports raise them: our own error, raised "from None"
            try:
                raise error
            except BaseException:
                raise PermanentError(f"wrapped: {SECRET_TEXT}") from None
        except PermanentError as wrapped:
            described = outbound.describe_failure(wrapped, where)
        assert described["error"] == code and SECRET_TEXT not in described["message"], described


@pytest.mark.parametrize(
    ("env", "allowed"),
    [
        ({}, True),  # local mode: loopback bind, no OIDC
        ({"DISPATCH_HOST": "0.0.0.0"}, False),
        ({"OIDC_ISSUER": "https://id.example.com", "OIDC_CLIENT_ID": "a",
          "OIDC_CLIENT_SECRET": "b"}, False),
        ({"DISPATCH_HOST": "0.0.0.0", "DISPATCH_ALLOW_PRIVATE_TARGETS": "true"}, True),
        ({"DISPATCH_ALLOW_PRIVATE_TARGETS": "false"}, False),
    ],
)  # fmt: skip
def test_private_targets_default_to_local_mode_only(env: dict[str, str], allowed: bool) -> None:
    assert load_settings(env).private_targets_allowed is allowed


def test_the_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match="DISPATCH_ALLOW_PRIVATE_TARGETS"):
        load_settings({"DISPATCH_ALLOW_PRIVATE_TARGETS": "sometimes"})


@pytest.mark.parametrize(
    "host", ["169.254.169.254", "10.0.0.1", "192.168.0.1", "100.64.0.1", "fd00::1", "::1"]
)
async def test_saved_senders_aimed_inside_are_refused_before_any_connection(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At connect time, unit-level: no socket may even be attempted (had one been, the
    patched connect calls fail the test instead of sending a packet anywhere)."""

    async def no_connection(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a connection was attempted: {args[1:]}")

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "create_connection", no_connection)
    monkeypatch.setattr(loop, "sock_connect", no_connection)
    closed = Settings(allow_private_targets=False)
    literal = f"[{host}]" if ":" in host else host
    hook = webhook.WebhookTransport(
        TransportContext(closed, {"url": f"http://{literal}/latest/meta-data/", "password": "s"})
    )
    mail = smtp.SmtpTransport(TransportContext(closed, {"host": host, "port": 25, "tls": "none"}))
    try:
        for transport in (hook, mail):
            with pytest.raises(outbound.NotPublicError):
                await transport.check()
        message = OutgoingMessage(1, 1, "a@example.com", ("b@example.com",), "<1@x>", "s", b"x")
        for transport in (hook, mail):
            with pytest.raises(outbound.NotPublicError):  # a send fails the email, not retried
                await transport.send(message)
    finally:
        await hook.close()
        await mail.close()
