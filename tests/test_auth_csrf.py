"""CSRF: every form and every cookie-authenticated unsafe API call needs the session's token;
bearer-token API clients need none."""

from __future__ import annotations

import aiohttp
from aiohttp import FormData

from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token
from .support.web_session import csrf_of, dev_login

SCHEDULE = {"subject": "s", "body": "b", "recipients": ["a@example.com"],
            "start_at": "2099-01-01T00:00:00Z"}  # fmt: skip


async def test_a_form_post_without_the_token_is_refused(make_client: Start, store: Store) -> None:
    client = await make_client(roles=frozenset({"api"}))
    page = await (await client.get("/login")).text()
    refused = await client.post("/auth/dev/start", data={"next": "/"})
    assert refused.status == 403
    assert "security token is missing" in await refused.text()
    assert await store.pool.fetchval("SELECT count(*) FROM sessions") == 0

    token = await dev_login(client)
    assert token != csrf_of(page), "the token changes with the session"
    form = FormData({"subject": "Hi", "body": "Hello", "recipients_csv": "a@example.com"})
    refused = await client.post("/compose", data=form)
    assert refused.status == 403
    text = await refused.text()
    assert "CSRF" in text and "nothing was done" in text
    wrong = FormData({"subject": "Hi", "body": "B", "recipients_csv": "a@example.com",
                      "csrf_token": csrf_of(page)})  # fmt: skip
    assert (await client.post("/compose", data=wrong)).status == 403
    refused = await client.post("/logout", data={})
    assert refused.status == 403
    assert await store.pool.fetchval("SELECT count(*) FROM campaigns") == 0
    assert await store.pool.fetchval("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")

    accepted = await client.post("/logout", data={"csrf_token": token})
    assert accepted.status == 200 and accepted.url.path == "/login"


async def test_the_browsers_api_calls_need_the_csrf_header(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    token = await dev_login(client)
    # Reading is fine with the cookie alone.
    assert (await client.get("/api/emails/scheduled")).status == 200
    refused = await client.post("/api/emails/schedule", json=SCHEDULE)
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "csrf_failed"
    bad = await client.post("/api/emails/schedule", json=SCHEDULE, headers={"X-CSRF-Token": "0"})
    assert bad.status == 403
    ok = await client.post("/api/emails/schedule", json=SCHEDULE, headers={"X-CSRF-Token": token})
    assert ok.status == 201, await ok.text()

    # A bearer-token client sends no cookie and needs no CSRF token.
    headers = auth(await new_token(store, "api@example.com"))
    async with aiohttp.ClientSession() as api_client:
        url = client.make_url
        created = await api_client.post(url("/api/emails/schedule"), json=SCHEDULE, headers=headers)
        assert created.status == 201
        mine = await (await api_client.get(url("/api/emails/scheduled"), headers=headers)).json()
        assert len(mine["items"]) == 1, "the token's user sees only their own"


async def test_pages_need_a_session(make_client: Start) -> None:
    client = await make_client(roles=frozenset({"api"}))
    for path in ("/", "/compose", "/emails", "/campaigns", "/campaigns/1", "/inbox", "/inbox/1"):
        response = await client.get(path, allow_redirects=False)
        assert response.status == 303, path
        assert response.headers["Location"].startswith("/login?next="), path
    response = await client.get("/emails?sent_cursor=x")
    assert response.url.path == "/login" and response.url.query["next"] == "/emails?sent_cursor=x"
    assert (await client.get("/api/events")).status == 401
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/static/app.css")).status == 200
