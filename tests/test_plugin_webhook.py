"""The webhook transport against a real HTTP receiver on loopback, driven through the API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from email import message_from_bytes, policy
from typing import Any

import pytest

from dispatch_engine.builtins import webhook
from dispatch_engine.config import Settings
from dispatch_engine.store import Store
from dispatch_engine.transport import (
    OutgoingMessage,
    PermanentError,
    SenderRateLimitedError,
    TransientError,
    TransportContext,
)

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.http_receiver import Answer, Received, Receiver
from .support.smtp_sink import free_port

SECRET = "whsec-correct-horse-battery-staple"


def _recipient(request: Received) -> str:
    return str(request.json().get("to", ["ping"])[0])


def _scripted() -> Callable[[Received], Answer]:
    """flaky: 503 twice; busy: 429 Retry-After 1 once; gone: 410; anyone else: 200."""
    seen: Counter[str] = Counter()

    def respond(request: Received) -> Answer:
        to = _recipient(request)
        seen[to] += 1
        if to.startswith("flaky") and seen[to] <= 2:
            return 503, {}
        if to.startswith("busy") and seen[to] == 1:
            return 429, {"Retry-After": "1"}
        if to.startswith("gone"):
            return 410, {}
        return 200, {}

    return respond


def _signature_ok(request: Received) -> bool:
    """Checked here from first principles, not with the plugin's own `verify`."""
    fields = dict(part.split("=", 1) for part in request.headers["X-Dispatch-Signature"].split(","))
    signed = fields["t"].encode() + b"." + request.body
    expected = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(fields["t"])) < 60
    return fresh and hmac.compare_digest(expected, fields["v1"])


async def test_webhook_sender_posts_signed_json_and_retries_by_status(
    make_client: Start, settings: Settings, store: Store
) -> None:
    async with Receiver(_scripted()) as receiver:
        client = await make_client(replace(settings, retry_base_ms=50, max_attempts=4))
        headers = auth(await new_token(store))
        made = await client.post(
            "/api/senders",
            headers=headers,
            json={
                "from_address": "hooks@example.com",
                "transport": "webhook",
                "settings": {"url": f"{receiver.url}/inbound?key=abc", "password": SECRET},
            },
        )
        assert made.status == 201, await made.text()
        answer = await made.text()
        assert SECRET not in answer and '"password_set":true' in answer
        sender = (await made.json())["id"]
        stored = await store.pool.fetchval(
            "SELECT transport_settings FROM senders WHERE id = $1", sender
        )
        assert stored["password"].startswith("sealed:v1:")  # sealed at rest

        checked = await client.post(f"/api/senders/{sender}/test", headers=headers)
        assert (await checked.json())["ok"] is True
        ping = receiver.requests.pop()
        assert ping.json()["type"] == "ping" and _signature_ok(ping)

        recipients = [
            "ok1@example.com",
            "ok2@example.com",
            "flaky@example.com",
            "gone@example.com",
            "busy@example.com",
        ]
        payload = {
            "subject": "Hello {{ email }}",
            "body": "Text for {{ email }}",
            "html": "<p>HTML for {{ email }}</p>",
            "sender": sender,
            "recipients": recipients,
        }
        response = await client.post("/api/emails/schedule", json=payload, headers=headers)
        assert response.status == 201, await response.text()
        campaign = (await response.json())["campaign"]["id"]

        async def completed() -> bool:
            sql = "SELECT status FROM campaigns WHERE id = $1"
            return await store.pool.fetchval(sql, campaign) == "completed"

        await wait_for(completed)
        rows = {
            r["recipient"]: r
            for r in await store.pool.fetch(
                "SELECT recipient, status, attempts, last_error, message_id FROM dispatches"
            )
        }
        by_recipient: dict[str, list[Received]] = {}
        for request in receiver.requests:
            by_recipient.setdefault(_recipient(request), []).append(request)
        assert {to: len(got) for to, got in by_recipient.items()} == {
            "ok1@example.com": 1,
            "ok2@example.com": 1,
            "flaky@example.com": 3,
            "gone@example.com": 1,
            "busy@example.com": 2,
        }
        for request in receiver.requests:
            to = _recipient(request)
            body = request.json()
            assert request.path == "/inbound" and _signature_ok(request)
            assert request.headers["Content-Type"] == "application/json"
            assert request.headers["Idempotency-Key"] == body["message_id"]
            assert rows[to]["message_id"] in (body["message_id"], None)  # None: failed
            assert body["type"] == "email" and body["from"] == "hooks@example.com"
            assert body["to"] == [to] and body["subject"] == f"Hello {to}"
            raw = message_from_bytes(base64.b64decode(body["raw"]), policy=policy.default)
            link = str(raw["List-Unsubscribe"]).strip("<>")  # the bodies lack it: footers
            text = body["text"].replace("\r\n", "\n").strip()
            assert text == f"Text for {to}\n\nUnsubscribe: {link}"
            assert body["html"].startswith(f"<p>HTML for {to}</p>")
            assert f'<a href="{link}">' in body["html"]
            assert raw["Message-ID"] == body["message_id"] and raw["To"] == to
        for to in ("ok1@example.com", "ok2@example.com", "flaky@example.com", "busy@example.com"):
            assert rows[to]["status"] == "sent", rows[to]
        assert rows["flaky@example.com"]["attempts"] == 3
        flaky = by_recipient["flaky@example.com"]
        assert len({r.headers["Idempotency-Key"] for r in flaky}) == 1  # the same on every try
        assert rows["gone@example.com"]["status"] == "failed"
        assert rows["gone@example.com"]["attempts"] == 1
        assert rows["gone@example.com"]["last_error"].startswith("webhook answered 410")
        busy = by_recipient["busy@example.com"]
        assert busy[1].at - busy[0].at >= 0.9  # it waited for Retry-After
        ledger = await store.pool.fetchval(
            "SELECT response FROM ledger WHERE state = 'sent' LIMIT 1"
        )
        assert ledger == "200 answer 200"


async def test_an_unreachable_webhook_is_retried_then_failed(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client(replace(settings, retry_base_ms=20, max_attempts=3))
    headers = auth(await new_token(store))
    made = await client.post(
        "/api/senders",
        headers=headers,
        json={
            "from_address": "down@example.com",
            "transport": "webhook",
            "settings": {"url": f"http://127.0.0.1:{free_port()}/", "password": SECRET},
        },
    )
    payload = {
        "subject": "s",
        "body": "b",
        "sender": (await made.json())["id"],
        "recipients": ["x@example.com"],
    }
    assert (await client.post("/api/emails/schedule", json=payload, headers=headers)).ok

    async def failed() -> bool:
        return await store.pool.fetchval("SELECT status FROM dispatches") == "failed"

    await wait_for(failed)
    row = await store.pool.fetchrow("SELECT attempts, last_error FROM dispatches")
    assert row is not None and row["attempts"] == 3
    assert row["last_error"].startswith("gave up after 3 attempts: 127.0.0.1:")


def test_statuses_decide_what_happens_next() -> None:
    assert webhook.classify(200, "ok", None).response == "200 ok"
    assert webhook.classify(204, "", None).response == "204"
    for status in (408, 500, 502, 503):
        with pytest.raises(TransientError) as transient:
            webhook.classify(status, "later", None)
        assert not isinstance(transient.value, SenderRateLimitedError)
    with pytest.raises(SenderRateLimitedError) as limited:
        webhook.classify(429, "slow down", "7")
    assert limited.value.retry_after_s == 7.0
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    with pytest.raises(SenderRateLimitedError) as dated:
        webhook.classify(429, "", http_date)
    assert dated.value.retry_after_s is not None and 100 < dated.value.retry_after_s <= 120
    with pytest.raises(SenderRateLimitedError) as plain:
        webhook.classify(429, "", None)
    assert plain.value.retry_after_s is None  # the worker's backoff decides
    for status in (301, 400, 401, 404, 410, 422):
        with pytest.raises(PermanentError, match=f"webhook answered {status}"):
            webhook.classify(status, "no", None)


def test_signatures_verify_only_for_the_same_body_secret_and_a_recent_time() -> None:
    body = b'{"type": "email"}'
    now = int(time.time())
    header = webhook.sign(SECRET, body, now)
    assert webhook.verify(SECRET, header, body)
    assert not webhook.verify(SECRET, header, body + b" ")
    assert not webhook.verify("another secret", header, body)
    assert not webhook.verify(SECRET, header, body, now=now + 301)  # a replay, too late
    assert not webhook.verify(SECRET, "v1=" + header.split("v1=")[1], body)  # no time
    rotated = f"{header},v1={'0' * 64}"  # several v1 values: any may match
    assert webhook.verify(SECRET, rotated, body)


def test_a_webhook_sender_needs_a_url_and_a_secret() -> None:
    def build(**own: Any) -> Any:
        return webhook.WebhookTransport(TransportContext(Settings(), own))

    with pytest.raises(PermanentError, match=r"settings\.url"):
        build(password=SECRET)
    with pytest.raises(PermanentError, match=r"settings\.url"):
        build(url="ftp://example.com/", password=SECRET)
    with pytest.raises(PermanentError, match=r"settings\.password"):
        build(url="https://example.com/hook")
    assert build(url="https://user:pw@example.com/hook", password=SECRET).where == "example.com"


async def test_the_payload_carries_parts_and_raw_bytes() -> None:
    raw = (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: Hi\r\n"
        b"Message-ID: <1@example.com>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nJust text\r\n"
    )
    message = OutgoingMessage(
        7, 1, "a@example.com", ("b@example.com",), "<1@example.com>", "Hi", raw
    )
    body = webhook.payload(message)
    assert body["text"].strip() == "Just text" and body["html"] is None
    assert base64.b64decode(body["raw"]) == raw and body["dispatch_id"] == 7
