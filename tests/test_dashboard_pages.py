"""The dashboard over plain HTTP: the compose helpers, pagination links that walk every row
once, escaping, page headers, live partials, and event streams that end with the server."""

from __future__ import annotations

import re
from html import unescape

from aiohttp import FormData

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, wait_for
from .support.web_session import dev_login, next_event

FUTURE = "2099-01-01T00:00:00Z"


async def _dev_token(store: Store) -> dict[str, str]:
    user = await store.ensure_user(DEV_EMAIL)
    return auth(await store.create_token(user.id, "test"))


def _cells(html: str, section: str) -> list[str]:
    """The email cells of one table section of a page."""
    start = html.index(f'id="{section}"')
    end = html.find("</section>", start)
    cells = re.findall(r'<td class="email"[^>]*>([^<]*)</td>', html[start:end])
    return [unescape(cell) for cell in cells]


async def test_the_preview_renders_the_first_recipient_sandboxed(make_client: Start) -> None:
    client = await make_client(roles=frozenset({"api"}))
    csrf = {"X-CSRF-Token": await dev_login(client)}
    recipient = {"email": "ada@example.com", "vars": {"name": "Ada"}}
    html = '<p onclick="x()">{{ name }}</p><script>x()</script><a href="javascript:x()">l</a>'
    payload = {"subject": "Hi {{ name }}", "body": "For {{ email }}", "recipient": recipient,
               "html": html}  # fmt: skip
    response = await client.post("/api/compose/preview", json=payload, headers=csrf)
    body = await response.json()
    assert response.status == 200, body
    assert (body["subject"], body["body"]) == ("Hi Ada", "For ada@example.com")
    assert "<p>Ada</p>" in body["html"]
    assert "script" not in body["html"] and "onclick" not in body["html"]
    assert "javascript:" not in body["html"]

    cases = [({"body": "{{ name }"}, "body", "template error on line 1"),
             ({"subject": "{{ missing }}"}, "subject", "'missing' is undefined"),
             ({"body": "{{ ''.__class__.__mro__ }}"}, "body", "not allowed"),
             ({"html": "{{ 1/0 }}"}, "html", "cannot be rendered"),
             ({"body": "{{ {'a': 1}|dictsort(by=1) }}"}, "body", "cannot be rendered")]  # fmt: skip
    for change, field, message in cases:
        response = await client.post(
            "/api/compose/preview", json={**payload, **change}, headers=csrf
        )
        error = (await response.json())["error"]
        assert response.status == 422 and error["field"] == field, error
        assert message in error["message"], error


async def test_checking_recipients_counts_and_lists_rejects_before_scheduling(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    csrf = {"X-CSRF-Token": await dev_login(client)}
    csv_text = "email;city\nada@example.com;London\nnope\nalan@example.com;Wilmslow\n"
    form = FormData()
    form.add_field("recipients_file", csv_text.encode(), filename="people.csv")
    response = await client.post("/api/compose/recipients", data=form, headers=csrf)
    body = await response.json()
    assert response.status == 200, body
    assert body["valid"] == 2 and body["rejected_total"] == 1
    assert body["rejected"][0]["line"] == 3 and body["rejected"][0]["value"] == "nope"
    assert body["columns"] == ["city"]
    assert body["first"] == {"email": "ada@example.com", "vars": {"city": "London"}}

    text = await client.post(
        "/api/compose/recipients", json={"recipients_csv": "a@example.com\nb@example.com"},
        headers=csrf,
    )  # fmt: skip
    assert (await text.json())["valid"] == 2
    bad = FormData()
    bad.add_field("recipients_file", b"\xff\xfe\x00bad", filename="x.csv")
    response = await client.post("/api/compose/recipients", data=bad, headers=csrf)
    assert (await response.json())["error"]["field"] == "recipients_file"
    assert await store.pool.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_page_links_walk_every_row_once(make_client: Start, store: Store) -> None:
    client = await make_client(roles=frozenset({"api"}))
    headers = await _dev_token(store)
    recipients = [f"user{i:02}@example.com" for i in range(32)]
    payload = {"subject": "s", "body": "b", "recipients": recipients, "start_at": FUTURE,
               "delay_between_ms": 1000}  # fmt: skip
    assert (await client.post("/api/emails/schedule", json=payload, headers=headers)).status == 201
    for n in range(27):
        small = {"subject": f"Campaign {n:02}", "body": "b", "recipients": ["x@example.com"],
                 "start_at": FUTURE}  # fmt: skip
        assert (await client.post("/api/emails/schedule", json=small, headers=headers)).status
    await dev_login(client)

    seen: list[str] = []
    url: str | None = "/emails"
    while url:
        html = await (await client.get(url)).text()
        seen += [e for e in _cells(html, "scheduled") if e.startswith("user")]
        found = re.search(r'href="(/emails\?[^"]+)" rel="next"', html)
        url = unescape(found.group(1)) if found else None
    assert seen == recipients

    subjects: list[str] = []
    url = "/campaigns"
    while url:
        html = await (await client.get(url)).text()
        subjects += re.findall(r">(Campaign \d\d)</a>", html)
        found = re.search(r'href="(/campaigns\?cursor=\d+)"', html)
        url = found.group(1) if found else None
    assert subjects == [f"Campaign {n:02}" for n in reversed(range(27))]


async def test_the_inbox_pages_through_every_message(make_client: Start, store: Store) -> None:
    client = await make_client()
    headers = await _dev_token(store)
    recipients = [f"p{i:02}@example.com" for i in range(27)]
    payload = {"subject": "Hi", "body": "b", "recipients": recipients, "html": "<b>{{ email }}</b>"}
    assert (await client.post("/api/emails/schedule", json=payload, headers=headers)).status == 201

    async def all_captured() -> bool:
        return await store.pool.fetchval("SELECT count(*) FROM captured_messages") == 27

    await wait_for(all_captured)
    await dev_login(client)
    seen: list[str] = []
    url: str | None = "/inbox"
    while url:
        html = await (await client.get(url)).text()
        seen += re.findall(r"to (p\d\d@example\.com)</span>", html)
        found = re.search(r'href="(/inbox\?cursor=\d+)"', html)
        url = found.group(1) if found else None
    assert sorted(seen) == recipients and len(seen) == len(set(seen))
    first = await store.pool.fetchval(
        "SELECT id FROM captured_messages WHERE 'p00@example.com' = ANY(recipients)"
    )
    page = await (await client.get(f"/inbox/{first}")).text()
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in page
    assert "&lt;b&gt;p00@example.com&lt;/b&gt;" in page, "the HTML body sits escaped in srcdoc"


async def test_pages_escape_what_users_wrote_and_send_safe_headers(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    headers = await _dev_token(store)
    evil = '<img src=x onerror="alert(1)">'
    payload = {"subject": evil, "body": "b", "recipients": ["a@example.com"], "start_at": FUTURE}
    created = await client.post("/api/emails/schedule", json=payload, headers=headers)
    campaign_id = (await created.json())["campaign"]["id"]
    await dev_login(client)
    for path in ("/emails", "/campaigns", f"/campaigns/{campaign_id}"):
        response = await client.get(path)
        html = await response.text()
        assert evil not in html and "&lt;img src=x onerror=" in html, path
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    partial = await client.get("/emails", headers={"X-Partial": "live"})
    text = await partial.text()
    assert 'id="scheduled"' in text and "<html" not in text
    missing = await client.get("/campaigns/999999")
    assert missing.status == 404 and "There is nothing at this address" in await missing.text()


async def test_event_streams_end_when_the_server_stops(make_client: Start) -> None:
    client = await make_client(roles=frozenset({"api"}))
    await dev_login(client)
    stream = await client.get("/api/events")
    assert stream.headers["Content-Type"] == "text/event-stream"
    assert (await next_event(stream))[0] == "hello"
    await client.server.close()
    assert await stream.content.read() == b"", "the stream closes instead of hanging"
