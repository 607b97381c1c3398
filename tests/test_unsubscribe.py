"""One-click unsubscribe (RFC 8058, RFC 2369) end to end: the headers on the wire (nodemailer's
smtp-server), the link working with no cookie or token, a GET that changes nothing, forged
tokens, and one tenant's link acting only in that tenant's list."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import dkim
import pytest

from dispatch_engine.config import Settings, ensure_secret_key
from dispatch_engine.consent.tokens import DispatchTokens, Purpose
from dispatch_engine.dkim.keys import generate_key, record_value
from dispatch_engine.secretbox import SecretBox
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token, wait_for
from .support.smtp_peer import SmtpPeer

ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}
ONE_CLICK_BODY = b"List-Unsubscribe=One-Click"


async def _schedule(
    client: AppClient, headers: dict[str, str], recipients: list[str], **extra: Any
) -> int:
    payload = {"subject": "News", "body": "Hello {{ email }}", "recipients": recipients, **extra}
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201, await response.text()
    return int((await response.json())["campaign"]["id"])


async def _all_sent(store: Store, campaign: int) -> None:
    async def done() -> bool:
        rows = await store.pool.fetch(
            "SELECT status FROM dispatches WHERE campaign_id = $1", campaign
        )
        return bool(rows) and all(r["status"] == "sent" for r in rows)

    await wait_for(done)


async def _captured(store: Store, campaign: int) -> dict[str, EmailMessage]:
    """The capture inbox's messages of a campaign by recipient, parsed by `email`."""
    await _all_sent(store, campaign)
    rows = await store.pool.fetch(
        """SELECT d.recipient, c.raw FROM captured_messages c JOIN dispatches d
           ON d.id = c.dispatch_id WHERE d.campaign_id = $1""",
        campaign,
    )
    parsed = {
        r["recipient"]: email.message_from_bytes(r["raw"], policy=email.policy.default)
        for r in rows
    }
    return parsed


def _link(message: EmailMessage) -> str:
    """The one-click URL of List-Unsubscribe (its first, https-or-http entry)."""
    found = re.match(r"<(https?://[^>]+)>", str(message["List-Unsubscribe"]))
    assert found, message["List-Unsubscribe"]
    return found.group(1)


async def _stranger(client: AppClient, method: str, url: str, **kw: Any) -> tuple[int, str, Any]:
    """A request as a mail provider sends it: its own connection, no cookie, no token."""
    path = urlsplit(url).path
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.request(method, client.make_url(path), allow_redirects=False, **kw) as response,
    ):
        return response.status, await response.text(), response.headers


async def _suppressions(store: Store) -> list[tuple[int, str, str, str]]:
    rows = await store.pool.fetch(
        "SELECT owner_id, email_normalized, reason, source FROM suppressions ORDER BY id"
    )
    return [tuple(r) for r in rows]


async def test_a_scheduled_email_carries_both_headers_and_a_post_of_its_link_unsubscribes(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """Sent over SMTP to a real server: RFC 8058's two headers; the POST that Gmail or Yahoo
    would make (no cookie, no token) answers 2xx, sets no cookie, and suppresses the address
    (normalized) in its owner's list; a second POST changes nothing more."""
    with SmtpPeer() as peer:
        client = await make_client()
        headers = auth(await new_token(store, "owner@news.example"))
        body = {
            "from_address": "news@news.example",
            "display_name": "Ada's News",
            "transport": "smtp",
            "settings": {"host": "127.0.0.1", "port": peer.port, "tls": "none"},
        }
        sender = await client.post("/api/senders", json=body, headers=headers)
        assert sender.status == 201, await sender.text()
        await _schedule(
            client, headers, ["Ada.Lovelace@Example.COM"], sender=(await sender.json())["id"]
        )

        async def received() -> bool:
            return bool(peer.messages())

        await wait_for(received)
        (sent,) = peer.messages()
    message = email.message_from_string(sent["header"] + "\r\n\r\n", policy=email.policy.default)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = _link(message)
    assert str(message["List-Unsubscribe"]) == f"<{url}>", "no mailto: none is configured"
    assert url.startswith(f"{settings.public_url}/u/")
    assert await _suppressions(store) == []

    status, page, answer = await _stranger(
        client, "POST", url, data=ONE_CLICK_BODY, headers=ONE_CLICK
    )
    assert 200 <= status < 300, page
    assert "Set-Cookie" not in answer, "no session is made for a one-click POST"
    assert "You are unsubscribed" in page and "Ada&#39;s News" in page
    owner = await store.ensure_user("owner@news.example")
    found = await store.suppression(owner.id, "ada.lovelace@example.com")
    assert found is not None and found.reason == "unsubscribed" and found.source == "one_click"

    again, _, _ = await _stranger(client, "POST", url, data=ONE_CLICK_BODY, headers=ONE_CLICK)
    assert again == 200, "idempotent: the same link twice is one unsubscribe"
    assert len(await _suppressions(store)) == 1
    events = await store.pool.fetch("SELECT kind, source, fingerprint FROM feedback_events")
    assert [tuple(e) for e in events] == [
        ("unsubscribe", "one_click", f"unsubscribe:{found.dispatch_id}")
    ]


async def test_a_get_of_the_link_only_shows_a_button_and_changes_nothing(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """Link scanners follow GETs: a GET (or HEAD) shows the confirmation page with the form
    that posts `List-Unsubscribe=One-Click`, and suppresses nothing. The page shows the From
    name and nothing else of the sender's account (not its owner, not its address)."""
    client = await make_client()
    headers = auth(await new_token(store, "owner@news.example"))
    made = await client.post(
        "/api/senders",
        headers=headers,
        json={
            "from_address": "hidden-sender@news.example",
            "display_name": "Ada's News",
            "transport": "capture",
        },
    )
    campaign = await _schedule(
        client, headers, ["reader@example.com"], sender=(await made.json())["id"]
    )
    url = _link((await _captured(store, campaign))["reader@example.com"])
    for method in ("GET", "HEAD", "GET"):
        status, page, answer = await _stranger(client, method, url)
        assert status == 200
        assert answer["Cache-Control"] == "no-store" and answer["Referrer-Policy"] == "no-referrer"
    assert '<form method="post"' in page
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page
    assert "Ada&#39;s News" in page and "reader@example.com" in page
    assert "owner@news.example" not in page and "hidden-sender" not in page
    assert 'href="/' not in page.replace(f'href="{urlsplit(url).path}"', ""), "no dashboard link"
    assert await _suppressions(store) == []
    assert await store.pool.fetchval("SELECT count(*) FROM feedback_events") == 0


async def test_a_forged_or_other_purpose_token_is_a_404_and_changes_nothing(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client()
    headers = auth(await new_token(store, "owner@news.example"))
    campaign = await _schedule(client, headers, ["reader@example.com"])
    url = _link((await _captured(store, campaign))["reader@example.com"])
    dispatch_id = await store.pool.fetchval("SELECT id FROM dispatches")
    base = url.rsplit("/", 1)[0]
    real = url.rsplit("/", 1)[1]
    forged = [
        DispatchTokens(settings.secret_key, Purpose.BOUNCE).make(dispatch_id),  # a VERP token
        DispatchTokens("another-secret-key-0123456789", Purpose.UNSUBSCRIBE).make(dispatch_id),
        DispatchTokens(settings.secret_key, Purpose.UNSUBSCRIBE).make(dispatch_id + 1),  # none
        real[:-1] + ("b" if real[-1] == "a" else "a"),
        real[:-1],
        "a" * 29,
        "%00",
        "x" * 3000,
    ]
    for token in forged:
        for method, kw in (("GET", {}), ("POST", {"data": ONE_CLICK_BODY, "headers": ONE_CLICK})):
            status, page, _ = await _stranger(client, method, f"{base}/{token}", **kw)
            assert status == 404, (token, method, status, page[:300])
            assert "This link does not work" in page
    assert await _suppressions(store) == []
    assert await store.pool.fetchval("SELECT count(*) FROM feedback_events") == 0


async def test_a_post_without_the_one_click_field_is_a_400_and_multipart_is_accepted(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client()
    headers = auth(await new_token(store, "owner@news.example"))
    campaign = await _schedule(client, headers, ["reader@example.com"])
    url = _link((await _captured(store, campaign))["reader@example.com"])
    for data, kw in (
        (b"", {}),
        (b"List-Unsubscribe=Maybe", ONE_CLICK),
        (b"unsubscribe=One-Click", ONE_CLICK),
        (b'{"List-Unsubscribe": "One-Click"}', {"Content-Type": "application/json"}),
    ):
        status, page, _ = await _stranger(client, "POST", url, data=data, headers=kw)
        assert status == 400, (data, status, page[:300])
        assert "Nothing was done" in page
    huge = ONE_CLICK_BODY + b"&pad=" + b"x" * 10_000
    status, _, _ = await _stranger(client, "POST", url, data=huge, headers=ONE_CLICK)
    assert status == 413, "the body is capped"
    assert await _suppressions(store) == []

    form = aiohttp.FormData()
    form.add_field("List-Unsubscribe", "One-Click")  # multipart/form-data, as RFC 8058 allows
    status, page, _ = await _stranger(client, "POST", url, data=form)
    assert status == 200, page
    owner = await store.ensure_user("owner@news.example")
    assert [s[1:3] for s in await _suppressions(store)] == [("reader@example.com", "unsubscribed")]
    assert (await _suppressions(store))[0][0] == owner.id


async def test_a_link_of_tenant_a_suppresses_only_in_tenant_a_list(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """Both tenants mail the same address; A's link unsubscribes it from A only."""
    client = await make_client()
    a = auth(await new_token(store, "a@a.example"))
    b = auth(await new_token(store, "b@b.example"))
    a_campaign = await _schedule(client, a, ["shared@example.com"])
    b_campaign = await _schedule(client, b, ["shared@example.com"])
    a_url = _link((await _captured(store, a_campaign))["shared@example.com"])
    b_url = _link((await _captured(store, b_campaign))["shared@example.com"])
    assert a_url != b_url
    status, _, _ = await _stranger(client, "POST", a_url, data=ONE_CLICK_BODY, headers=ONE_CLICK)
    assert status == 200
    a_owner = await store.ensure_user("a@a.example")
    b_owner = await store.ensure_user("b@b.example")
    assert await store.suppression(a_owner.id, "shared@example.com") is not None
    assert await store.suppression(b_owner.id, "shared@example.com") is None
    status, page, _ = await _stranger(client, "GET", b_url)
    assert status == 200 and "Stop emails" in page, "B's own link still asks"


async def test_the_worker_and_the_api_agree_on_a_generated_local_key(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """Local mode, no DISPATCH_SECRET_KEY: the api and the worker, each started as
    `dispatch-engine run` starts them (`ensure_secret_key`), use the key kept in the data
    folder, so the worker's link works on the api."""
    local = replace(settings, secret_key="")
    api = await make_client(ensure_secret_key(local), roles=frozenset({"api"}))
    await make_client(ensure_secret_key(local), roles=frozenset({"worker"}))
    headers = auth(await new_token(store, "owner@news.example"))
    campaign = await _schedule(api, headers, ["reader@example.com"])
    url = _link((await _captured(store, campaign))["reader@example.com"])
    assert (settings.data_dir / "secret_key").exists()
    status, page, _ = await _stranger(api, "POST", url, data=ONE_CLICK_BODY, headers=ONE_CLICK)
    assert status == 200, page
    assert len(await _suppressions(store)) == 1


@pytest.mark.parametrize("mailto", ["unsubscribe@news.example", None])
async def test_list_unsubscribe_names_a_mailto_when_one_is_configured(
    make_client: Start, settings: Settings, store: Store, mailto: str | None
) -> None:
    """With DISPATCH_UNSUBSCRIBE_MAILTO, List-Unsubscribe offers the URL first (RFC 2369:
    in order of preference; RFC 8058's one-click is the URL), then the mailto with the same
    token in its subject."""
    configured = settings.with_environ(DISPATCH_UNSUBSCRIBE_MAILTO=mailto) if mailto else settings
    client = await make_client(configured)
    headers = auth(await new_token(store, "owner@news.example"))
    campaign = await _schedule(client, headers, ["reader@example.com"])
    message = (await _captured(store, campaign))["reader@example.com"]
    url = _link(message)
    token = url.rsplit("/", 1)[1]
    expected = f"<{url}>" + (f", <mailto:{mailto}?subject=unsubscribe-{token}>" if mailto else "")
    assert str(message["List-Unsubscribe"]) == expected
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_the_dkim_signature_covers_both_unsubscribe_headers_of_a_sent_email(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """RFC 8058 asks that the DKIM signature cover List-Unsubscribe and List-Unsubscribe-Post:
    the worker signs after rendering, so an email as sent verifies with dkimpy, names both in
    `h=`, and fails once its link is changed."""
    pair = generate_key("s2026", "news.example")
    client = await make_client()
    headers = auth(await new_token(store, "owner@news.example"))
    made = await client.post("/api/senders", headers=headers, json={
        "from_address": "news@news.example", "transport": "capture"})  # fmt: skip
    sender = (await made.json())["id"]
    await store.pool.execute(
        """UPDATE senders SET dkim_selector = $2, dkim_domain = $3, dkim_private_key = $4,
                              dkim_public_key = $5 WHERE id = $1""",
        sender, pair.selector, pair.domain,
        SecretBox(settings.secret_key).seal(pair.private_pem), pair.public_b64,
    )  # fmt: skip
    campaign = await _schedule(client, headers, ["reader@example.com"], sender=sender)
    await _all_sent(store, campaign)
    raw = await store.pool.fetchval("SELECT raw FROM captured_messages")
    record = f"{pair.selector}._domainkey.{pair.domain}.".encode()

    def txt(query: bytes, timeout: float = 5) -> bytes | None:
        return record_value(pair.public_b64).encode() if query == record else None

    assert dkim.verify(raw, dnsfunc=txt), raw[:600]
    signature = email.message_from_bytes(raw, policy=email.policy.default)["DKIM-Signature"]
    signed = re.search(r"h=([^;]*);", re.sub(r"\s", "", str(signature)))
    assert signed is not None
    assert {"list-unsubscribe", "list-unsubscribe-post"} <= set(signed.group(1).split(":"))
    url = _link(email.message_from_bytes(raw, policy=email.policy.default))
    assert not dkim.verify(raw.replace(url.encode(), url.encode()[:-1] + b"x"), dnsfunc=txt)
