"""User B never sees nor touches user A's campaigns, emails, inbox or live events, through any
page or API route, with a session cookie or with a bearer token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from dispatch_engine.config import Settings
from dispatch_engine.events import EVENTS_CHANNEL
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth, wait_for
from .support.oidc_provider import OidcPeer, Person, authorize, launch, start_app, start_login
from .support.web_session import csrf_of, next_event

# Every route that names one object by id; a new one must be added here (checked below).
ID_ROUTES = {
    ("GET", "/campaigns/{id}"),
    ("GET", "/inbox/{id}"),
    ("GET", "/api/campaigns/{id}"),
    ("GET", "/api/campaigns/{id}/replies"),
    ("GET", "/api/inbox/{id}"),
    ("POST", "/api/campaigns/{id}/pause"),
    ("POST", "/api/campaigns/{id}/resume"),
    ("POST", "/api/campaigns/{id}/cancel"),
    ("POST", "/api/campaigns/{id}/retry-failed"),
    ("GET", "/api/campaigns/{id}/recipients"),
    ("POST", "/api/campaigns/{id}/recipients/{email}/stop"),
    ("GET", "/api/senders/{id}"),
    ("PATCH", "/api/senders/{id}"),
    ("DELETE", "/api/senders/{id}"),
    ("POST", "/api/senders/{id}/test"),
    ("POST", "/api/senders/{id}/resume"),
    ("DELETE", "/api/tokens/{id}"),
    ("POST", "/tokens/{id}/revoke"),
}
LISTS = ["/emails", "/campaigns", "/inbox", "/api/emails/scheduled", "/api/emails/sent",
         "/api/inbox", "/api/campaigns"]  # fmt: skip


A = Person(sub="a", email="a@example.com", name="A")
B = Person(sub="b", email="b@example.com", name="B")


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[OidcPeer]:
    """panva's oidc-provider on loopback (tests/support/oidc_provider.py)."""
    async with launch(tmp_path / "oidc-provider.log") as started:
        yield started


async def _sign_in(
    app: AppClient, peer: OidcPeer, person: Person
) -> tuple[aiohttp.ClientSession, str]:
    """A browser of its own for `person`; returns it and its session's CSRF token."""
    browser = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    target = await start_login(browser, app.make_url("/"), "/emails")
    landed = await browser.get(await authorize(browser, target, peer.issuer, person.sub))
    assert landed.url.path == "/emails", await landed.text()
    return browser, csrf_of(await landed.text())


async def test_user_b_cannot_see_or_touch_user_a(
    make_client: Start, settings: Settings, peer: OidcPeer, store: Store, redis: Redis
) -> None:
    app = await start_app(make_client, settings, peer, A, B,
                          roles=frozenset({"api", "worker", "sweeper"}))  # fmt: skip
    routes = {(r.method, r.resource.canonical) for r in app.app.router.routes()
              if r.resource and r.method != "HEAD"}  # fmt: skip
    assert {r for r in routes if "{id}" in r[1]} == ID_ROUTES, "cover the new route here"

    a, a_csrf = await _sign_in(app, peer, A)
    b, b_csrf = await _sign_in(app, peer, B)
    b_id = await store.pool.fetchval("SELECT id FROM users WHERE email = 'b@example.com'")
    b_token = auth(await store.create_token(b_id, "t"))
    url = app.make_url
    try:
        a_events = await a.get(url("/api/events"))
        b_events = await b.get(url("/api/events"))
        assert (await next_event(a_events))[0] == "hello"
        assert (await next_event(b_events))[0] == "hello"

        now = {"subject": "Secret plan", "body": "For {{ email }}",
               "recipients": ["target@example.com"]}  # fmt: skip
        later = {**now, "recipients": ["later@example.com"], "start_at": "2099-01-01T00:00:00Z"}
        created = []
        for payload in (now, later):
            response = await a.post(url("/api/emails/schedule"), json=payload,
                                    headers={"X-CSRF-Token": a_csrf})  # fmt: skip
            assert response.status == 201, await response.text()
            created.append((await response.json())["campaign"]["id"])
        sent_id, later_id = created

        async def delivered() -> bool:
            return bool(await store.pool.fetchval("SELECT count(*) FROM captured_messages"))

        await wait_for(delivered)
        message_id = await store.pool.fetchval("SELECT id FROM captured_messages")
        # A's own stream hears about A's campaigns and emails …
        seen: set[str] = set()
        while "dispatches" not in seen:
            kind, data = await asyncio.wait_for(next_event(a_events), 30)
            seen.add(kind)
            assert "owner_id" not in data
        # … and B's stream, when told something of B's, has heard nothing before it.
        marker = {"type": "marker", "owner_id": b_id}
        await redis.publish(EVENTS_CHANNEL, orjson.dumps(marker))
        assert await asyncio.wait_for(next_event(b_events), 30) == ("marker", {"type": "marker"})
        a_events.close()
        b_events.close()

        for path in LISTS:
            for who, headers in ((b, {}), (b, b_token)):
                body = await (await who.get(url(path), headers=headers)).text()
                assert "target@example.com" not in body and "later@example.com" not in body, path
                assert "Secret plan" not in body, path
            body = await (await a.get(url(path))).text()
            assert any(s in body for s in ("target@", "later@", "Secret plan")), path

        a_sender = await store.pool.fetchval(
            "SELECT id FROM senders WHERE owner_id = (SELECT id FROM users WHERE email = $1)",
            "a@example.com",
        )
        a_user = await store.pool.fetchval("SELECT id FROM users WHERE email = 'a@example.com'")
        a_token = await store.create_token(a_user, "a's")
        a_token_id = await store.pool.fetchval("SELECT max(id) FROM api_tokens")
        ids = {"/campaigns/": later_id, "/api/campaigns/": later_id, "/inbox/": message_id,
               "/api/inbox/": message_id, "/api/senders/": a_sender, "/api/tokens/": a_token_id,
               "/tokens/": a_token_id}  # fmt: skip
        for method, route in sorted(ID_ROUTES):
            prefix = route[: route.index("{id}")]
            path = route.replace("{id}", str(ids[prefix]))
            target = url(path.replace("{email}", "later@example.com"))
            sent_json: dict[str, str] | None = {} if method in ("POST", "PATCH") else None
            for headers in ({"X-CSRF-Token": b_csrf}, b_token):
                if headers is b_token and method != "GET" and not route.startswith("/api/"):
                    continue  # a page's form is a session's; a bearer token is the API's
                response = await b.request(method, target, headers=headers, json=sent_json)
                assert response.status == 404, (method, route, response.status)
        assert "a@example.com" not in await (await b.get(url("/api/senders"))).text()
        status = await store.pool.fetchval("SELECT status FROM campaigns WHERE id = $1", later_id)
        assert status == "scheduled", "B's requests changed nothing"
        assert await store.user_for_token(a_token) is not None, "A's token is still live"
        page = await a.get(url(f"/campaigns/{later_id}"))
        assert page.status == 200 and "Secret plan" in await page.text()
        assert (await a.get(url(f"/inbox/{message_id}"))).status == 200
        assert sent_id != later_id
    finally:
        await a.close()
        await b.close()
