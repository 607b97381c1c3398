"""Outbound targets: senders never reach loopback, link-local or private addresses unless the
operator allows it, not even by DNS rebinding, and a sender test never reflects what the
remote said.

Nothing here sends traffic anywhere but loopback: refusals of 169.254.169.254, 10.0.0.1 and
the like happen before any connection, and the listeners on loopback prove that none was made.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp.connector
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from dispatch_engine import outbound
from dispatch_engine.builtins import smtp, webhook
from dispatch_engine.config import Settings
from dispatch_engine.store import Store
from dispatch_engine.transport import TransportContext

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.smtp_sink import Sink, free_port
from .support.tls_certs import tls_server

SECRET_TEXT = "INTERNAL-ONLY-7f3a"  # what a remote says; must never reach the user


class Listener:
    """A TCP listener on loopback that counts the connections it accepts and answers each
    with an SMTP refusal carrying SECRET_TEXT, what a port scanner would read. A probe, not a
    stand-in for a server: most tests assert that no connection arrived at all."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(f"554 {SECRET_TEXT} no service here\r\n".encode())
        writer.close()

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    async with Listener() as probe:
        yield probe


@pytest.fixture
def closed(settings: Settings) -> Settings:
    """What a public deployment runs with: private targets not allowed."""
    return replace(settings, allow_private_targets=False)


@pytest.fixture
def rebinding() -> Iterator[list[str]]:
    """A resolver that answers a public address first, then loopback: the DNS rebinding
    attack. Injected with `outbound.set_resolver` (why: see its comment)."""
    asked: list[str] = []

    async def resolve(host: str, port: int, family: int = 0) -> list[str]:
        asked.append(host)
        return ["8.8.8.8"] if len(asked) == 1 else ["127.0.0.1"]

    previous = outbound.set_resolver(resolve)
    yield asked
    outbound.set_resolver(previous)


def webhook_sender(url: str, address: str = "hooks@example.com") -> dict[str, Any]:
    return {
        "from_address": address,
        "transport": "webhook",
        "settings": {"url": url, "password": "whsec-0123456789"},
    }


def smtp_sender(host: str, port: int, address: str = "mail@example.com") -> dict[str, Any]:
    return {
        "from_address": address,
        "transport": "smtp",
        "settings": {"host": host, "port": port, "tls": "none"},
    }


async def test_private_targets_are_refused_on_save_and_nothing_is_contacted(
    make_client: Start, closed: Settings, store: Store, listener: Listener
) -> None:
    client = await make_client(closed, roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    port = listener.port
    urls = [f"http://127.0.0.1:{port}/hook", f"http://[::1]:{port}/", f"http://localhost:{port}/",
            "http://169.254.169.254/latest/meta-data/", "https://10.0.0.1/hook",
            f"http://[::ffff:127.0.0.1]:{port}/"]  # fmt: skip
    for n, url in enumerate(urls):
        made = await client.post(
            "/api/senders", json=webhook_sender(url, f"h{n}@x.io"), headers=headers
        )
        assert made.status == 422, url
        assert (await made.json())["error"]["field"] == "settings.url"
    for n, host in enumerate(["127.0.0.1", "::1", "localhost", "169.254.169.254", "10.0.0.1"]):
        made = await client.post(
            "/api/senders", json=smtp_sender(host, port, f"m{n}@x.io"), headers=headers
        )
        assert made.status == 422, host
        error = (await made.json())["error"]
        assert error["field"] == "settings.host" and "not a public address" in error["message"]

    # A public sender cannot be moved onto a private address either (no connection is made
    # on save: the public literal below is only checked, never contacted).
    made = await client.post(
        "/api/senders", json=webhook_sender("https://8.8.8.8/hook"), headers=headers
    )
    assert made.status == 201, await made.text()
    sender = (await made.json())["id"]
    moved = await client.patch(
        f"/api/senders/{sender}",
        json={"settings": {"url": f"http://127.0.0.1:{port}/"}},
        headers=headers,
    )
    assert moved.status == 422 and (await moved.json())["error"]["field"] == "settings.url"
    assert listener.connections == 0


async def _saved_while_allowed(
    make_client: Start, settings: Settings, headers: dict[str, str], body: dict[str, Any]
) -> int:
    """A sender saved while the operator allowed private targets (they turn it off later)."""
    client = await make_client(settings, roles=frozenset({"api"}))
    made = await client.post("/api/senders", json=body, headers=headers)
    assert made.status == 201, await made.text()
    return int((await made.json())["id"])


async def test_a_saved_private_target_is_refused_at_connect_and_gets_nothing(
    make_client: Start, settings: Settings, closed: Settings, store: Store, listener: Listener
) -> None:
    headers = auth(await new_token(store))
    hook = await _saved_while_allowed(
        make_client, settings, headers, webhook_sender(f"http://localhost:{listener.port}/")
    )
    mail = await _saved_while_allowed(
        make_client, settings, headers, smtp_sender("127.0.0.1", listener.port)
    )
    client = await make_client(replace(closed, max_attempts=1))
    for sender in (hook, mail):
        checked = await (await client.post(f"/api/senders/{sender}/test", headers=headers)).json()
        assert checked["ok"] is False and checked["error"] == "not_public", checked
    for sender in (hook, mail):
        payload = {"subject": "s", "body": "b", "sender": sender, "recipients": ["a@example.com"]}
        scheduled = await client.post("/api/emails/schedule", json=payload, headers=headers)
        assert scheduled.status == 201, await scheduled.text()

    async def both_failed() -> bool:
        sql = "SELECT count(*) FROM dispatches WHERE status = 'failed'"
        return await store.pool.fetchval(sql) == 2

    await wait_for(both_failed)
    errors = await store.pool.fetch("SELECT last_error FROM dispatches")
    assert all("not a public address" in row["last_error"] for row in errors), errors
    assert listener.connections == 0


async def test_dns_rebinding_is_refused_at_connect(
    make_client: Start,
    closed: Settings,
    store: Store,
    listener: Listener,
    rebinding: list[str],
) -> None:
    """`localhost` really is loopback here: had the connection looked the name up again with
    the machine's resolver, or not checked, it would reach the listener."""
    client = await make_client(closed, roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    made = await client.post(
        "/api/senders", json=webhook_sender(f"http://localhost:{listener.port}/"), headers=headers
    )
    assert made.status == 201, await made.text()  # public when saved
    checked = await client.post(f"/api/senders/{(await made.json())['id']}/test", headers=headers)
    answer = await checked.json()
    assert answer["ok"] is False and answer["error"] == "not_public", answer
    assert rebinding == ["localhost", "localhost"]  # saved, then looked up again to connect
    assert listener.connections == 0

    rebinding.clear()  # the same for an SMTP sender
    made = await client.post(
        "/api/senders", json=smtp_sender("localhost", listener.port), headers=headers
    )
    assert made.status == 201, await made.text()
    checked = await client.post(f"/api/senders/{(await made.json())['id']}/test", headers=headers)
    answer = await checked.json()
    assert answer["ok"] is False and answer["error"] == "not_public", answer
    assert rebinding == ["localhost", "localhost"] and listener.connections == 0


async def _secret_http(status: int) -> web.AppRunner:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=f"{SECRET_TEXT} {'x' * 50}")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def test_a_sender_test_never_shows_the_remote_reply(
    make_client: Start, settings: Settings, store: Store, listener: Listener
) -> None:
    client = await make_client(settings, roles=frozenset({"api"}))  # private targets allowed
    headers = auth(await new_token(store))

    async def test_of(body: dict[str, Any]) -> dict[str, Any]:
        made = await client.post("/api/senders", json=body, headers=headers)
        assert made.status == 201, await made.text()
        sender = (await made.json())["id"]
        checked = await client.post(f"/api/senders/{sender}/test", headers=headers)
        text = await checked.text()
        assert SECRET_TEXT not in text, text
        result: dict[str, Any] = await checked.json()
        return result

    for status, expected in ((200, None), (500, "http_500"), (404, "http_404")):
        runner = await _secret_http(status)
        try:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
            result = await test_of(webhook_sender(url, f"w{status}@example.com"))
        finally:
            await runner.cleanup()
        assert result["ok"] is (expected is None) and result.get("error") == expected, result

    # A banner that is not a greeting: the port scanner would have read it.
    result = await test_of(smtp_sender("127.0.0.1", listener.port, "banner@example.com"))
    assert listener.connections == 1
    assert result["ok"] is False and result["error"] == "smtp_554", result

    refused = await test_of(smtp_sender("127.0.0.1", free_port(), "closed@example.com"))
    assert refused["error"] == "refused", refused


class _Refuse:
    def __call__(self, server: Any, session: Any, envelope: Any, *args: Any) -> AuthResult:
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 {SECRET_TEXT}")


async def test_an_smtp_login_failure_is_auth_failed_without_the_banner(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """aiosmtpd, a real SMTP server, greets with a banner of its own and refuses the login
    with a reply text of its own: neither may reach the user."""
    port = free_port()
    controller = Controller(
        Sink(), hostname="127.0.0.1", port=port, ident=SECRET_TEXT,
        authenticator=_Refuse(), auth_require_tls=False,
    )  # fmt: skip
    controller.start()
    try:
        client = await make_client(settings, roles=frozenset({"api"}))
        headers = auth(await new_token(store))
        body = smtp_sender("127.0.0.1", port)
        body["settings"] |= {"username": "ops", "password": "wrong"}
        made = await client.post("/api/senders", json=body, headers=headers)
        checked = await client.post(
            f"/api/senders/{(await made.json())['id']}/test", headers=headers
        )
        text = await checked.text()
    finally:
        controller.stop()
    assert SECRET_TEXT not in text and '"error":"auth_failed"' in text, text


async def test_a_webhook_timeout_is_bounded(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client(settings, roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    body = webhook_sender("http://127.0.0.1:9/hook")
    for timeout in (0, -1, 31, 3600, "10", True):
        body["settings"]["timeout"] = timeout
        made = await client.post("/api/senders", json=body, headers=headers)
        assert made.status == 422 and (await made.json())["error"]["field"] == "settings.timeout"
    transport = webhook.WebhookTransport(
        TransportContext(settings, {"url": "http://127.0.0.1:9/", "password": "s", "timeout": 600})
    )
    assert transport.timeout.total == outbound.WEBHOOK_MAX_TIMEOUT_S  # saved before the bound


@pytest.mark.parametrize("tls", ["tls", "starttls"])
@pytest.mark.parametrize(
    ("certified", "expected"), [("localhost", None), ("mx.other.test", "tls_error")]
)
async def test_smtp_connects_to_the_checked_address_and_verifies_tls_for_the_name(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tls: str,
    certified: str,
    expected: str | None,
) -> None:
    """The connection goes to the address checked for `localhost` (127.0.0.1), and TLS
    still verifies the certificate against the name `localhost`, not the address."""
    ca_file, context = tls_server(tmp_path, certified)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    port = free_port()
    tls_kwargs: dict[str, Any] = (
        {"ssl_context": context}
        if tls == "tls"
        else {"tls_context": context, "require_starttls": True}
    )
    controller = Controller(Sink(), hostname="127.0.0.1", port=port, **tls_kwargs)
    controller.start()
    try:
        own = {"host": "localhost", "port": port, "tls": tls}
        transport = smtp.SmtpTransport(TransportContext(settings, own))
        try:
            detail = await transport.check()
            outcome = None
        except Exception as exc:
            detail, outcome = "", outbound.describe_failure(exc, "localhost")["error"]
        finally:
            await transport.close()
    finally:
        controller.stop()
    assert outcome == expected, detail
    if expected is None:
        assert detail.startswith(f"connected to localhost:{port}")


@pytest.mark.parametrize(
    ("certified", "expected"), [("localhost", None), ("hook.other.test", "tls_error")]
)
async def test_a_webhook_keeps_the_url_name_for_tls_and_host(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    certified: str,
    expected: str | None,
) -> None:
    """Through `PublicResolver` the connection goes to a checked address while TLS (SNI and
    the certificate check) and the Host header keep the URL's name."""
    ca_file, context = tls_server(tmp_path, certified)
    # aiohttp builds its verifying context once, at import: trust the test's CA in it.
    monkeypatch.setattr(
        aiohttp.connector, "_SSL_CONTEXT_VERIFIED", ssl.create_default_context(cafile=ca_file)
    )
    hosts: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        hosts.append(request.host)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", answer)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    port = runner.addresses[0][1]
    own = {"url": f"https://localhost:{port}/hook", "password": "s"}
    transport = webhook.WebhookTransport(TransportContext(settings, own))
    try:
        detail = await transport.check()
        outcome = None
    except Exception as exc:
        detail, outcome = "", outbound.describe_failure(exc, "localhost")["error"]
    finally:
        await transport.close()
        await runner.cleanup()
    assert outcome == expected, detail
    assert hosts == ([f"localhost:{port}"] if expected is None else [])
