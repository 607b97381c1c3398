"""The REST API on the real app: validation, per-line rejects, idempotency, listings, scoping."""

from __future__ import annotations

import asyncio
import io
import secrets
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import FormData

from dispatch_engine import recipients
from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .conftest import fast
from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.web_session import dev_login


async def test_api_requires_a_valid_token(make_client: Start) -> None:
    client = await make_client()
    response = await client.get("/api/emails/scheduled")
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthenticated"
    response = await client.get("/api/me", headers=auth("de_wrong"))
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_token"


async def test_validation_errors_name_the_field(make_client: Start, store: Store) -> None:
    client = await make_client()
    headers = auth(await new_token(store))
    cases: list[tuple[Any, str]] = [
        ({"body": "x", "recipients": ["a@example.com"]}, "subject"),
        ({"subject": "s", "recipients": ["a@example.com"]}, "body"),
        ({"subject": "s", "body": "b"}, "recipients"),
        (
            {"subject": "s", "body": "b", "recipients": ["a@example.com"], "start_at": "tomorrow"},
            "start_at",
        ),
        (
            {
                "subject": "s",
                "body": "b",
                "recipients": ["a@example.com"],
                "start_at": "2030-01-01T09:00:00",
            },
            "start_at",
        ),
        (
            {"subject": "s", "body": "b", "recipients": ["a@example.com"], "delay_between_ms": -5},
            "delay_between_ms",
        ),
        (
            {"subject": "s", "body": "b", "recipients": ["a@example.com"], "hourly_limit": "lots"},
            "hourly_limit",
        ),
        ({"subject": "Hi {{ name }}", "body": "b", "recipients": ["a@example.com"]}, "subject"),
        ({"subject": "s", "body": "{% if %}", "recipients": ["a@example.com"]}, "body"),
        ({"subject": "s", "body": "b", "recipients": ["not-an-address"]}, "recipients"),
        (
            {"subject": "s", "body": "b", "recipients": ["a@example.com"], "sender": "nobody@x.io"},
            "sender",
        ),
    ]
    for payload, field in cases:
        response = await client.post("/api/emails/schedule", json=payload, headers=headers)
        body = await response.json()
        assert response.status == 422, (payload, body)
        assert body["error"]["field"] == field, (payload, body)
        assert field in body["error"]["message"]
    response = await client.post("/api/emails/schedule", data=b"{nope", headers=headers)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_json"
    response = await client.get("/api/emails/sent?limit=0", headers=headers)
    assert (await response.json())["error"]["field"] == "limit"


async def test_bad_rows_are_rejected_by_line_and_good_ones_scheduled(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    csv_text = (
        "email,name\n"
        "ada@example.com,Ada\n"
        "not an address,Bob\n"
        "alan@example.com,Alan\n"
        "ada@example.com,Ada again\n"
    )
    form = FormData()
    form.add_field("subject", "Hello {{ name }}")
    form.add_field("body", "Hi {{ name }}, this is for {{ email }}.")
    form.add_field("start_at", (datetime.now(UTC) + timedelta(hours=1)).isoformat())
    form.add_field("recipients_file", csv_text.encode(), filename="people.csv")
    response = await client.post("/api/emails/schedule", data=form, headers=headers)
    body = await response.json()
    assert response.status == 201, body
    assert body["accepted"] == 2
    assert [(r["line"], r["value"]) for r in body["rejected"]] == [
        (3, "not an address"),
        (5, "ada@example.com"),
    ]
    assert "duplicate of line 2" in body["rejected"][1]["reason"]
    assert body["campaign"]["total"] == 2
    assert body["campaign"]["counts"]["scheduled"] == 2

    listed = await (await client.get("/api/emails/scheduled", headers=headers)).json()
    assert [i["email"] for i in listed["items"]] == ["ada@example.com", "alan@example.com"]
    assert listed["items"][0]["subject"] == "Hello {{ name }}"
    assert listed["next_cursor"] is None


async def test_idempotency_key_creates_one_campaign(make_client: Start, store: Store) -> None:
    client = await make_client(roles=frozenset({"api"}))
    headers = {**auth(await new_token(store)), "Idempotency-Key": "order-42"}
    payload = {
        "subject": "s",
        "body": "b",
        "recipients": ["a@example.com", "b@example.com"],
        "start_at": "2099-01-01T00:00:00Z",
    }
    responses = await asyncio.gather(
        *(client.post("/api/emails/schedule", json=payload, headers=headers) for _ in range(3))
    )
    bodies = [await r.json() for r in responses]
    assert sorted(r.status for r in responses) == [200, 200, 201]
    assert len({b["campaign"]["id"] for b in bodies}) == 1
    count = await store.pool.fetchval("SELECT count(*) FROM dispatches")
    assert count == 2


async def test_keyset_pagination_walks_every_row_once(make_client: Start, store: Store) -> None:
    client = await make_client(roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    recipients = [f"user{i}@example.com" for i in range(23)]
    payload = {
        "subject": "s",
        "body": "b",
        "recipients": recipients,
        "start_at": "2099-01-01T00:00:00Z",
        "delay_between_ms": 1000,
    }
    assert (await client.post("/api/emails/schedule", json=payload, headers=headers)).status == 201
    seen: list[str] = []
    cursor = ""
    while True:
        url = "/api/emails/scheduled?limit=5" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url, headers=headers)).json()
        seen += [i["email"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == recipients


async def test_users_never_see_each_other(make_client: Start, store: Store) -> None:
    client = await make_client(roles=frozenset({"api"}))
    ada = auth(await new_token(store, "ada@example.com"))
    eve = auth(await new_token(store, "eve@example.com"))
    payload = {
        "subject": "s",
        "body": "b",
        "recipients": ["x@example.com"],
        "start_at": "2099-01-01T00:00:00Z",
    }
    created = await (await client.post("/api/emails/schedule", json=payload, headers=ada)).json()
    campaign_id = created["campaign"]["id"]
    assert (await client.get(f"/api/campaigns/{campaign_id}", headers=eve)).status == 404
    assert (await client.get(f"/api/campaigns/{campaign_id}", headers=ada)).status == 200
    eve_list = await (await client.get("/api/emails/scheduled", headers=eve)).json()
    assert eve_list["items"] == []
    assert (await (await client.get("/api/campaigns", headers=eve)).json())["items"] == []
    ada_campaigns = (await (await client.get("/api/campaigns", headers=ada)).json())["items"]
    assert [(c["id"], c["counts"]["scheduled"]) for c in ada_campaigns] == [(campaign_id, 1)]


async def test_scheduled_emails_reach_the_capture_inbox_once_at_their_time(
    make_client: Start, store: Store
) -> None:
    client = await make_client()
    headers = auth(await new_token(store))
    start = datetime.now(UTC) + timedelta(seconds=1)
    recipients = [{"email": f"p{i}@example.com", "vars": {"n": i}} for i in range(100)]
    payload = {
        "subject": "Number {{ n }}",
        "body": "Hello {{ email }}",
        "recipients": recipients,
        "start_at": start.isoformat(),
        "delay_between_ms": 10,
    }
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201
    campaign_id = (await response.json())["campaign"]["id"]

    async def all_sent() -> bool:
        detail = await (await client.get(f"/api/campaigns/{campaign_id}", headers=headers)).json()
        return bool(detail["counts"]["sent"] == 100 and detail["status"] == "completed")

    await wait_for(all_sent)
    rows = await store.pool.fetch(
        """SELECT d.scheduled_at, d.sent_at, m.deliveries, m.subject, m.recipients
           FROM dispatches d JOIN captured_messages m ON m.dispatch_id = d.id"""
    )
    assert len(rows) == 100
    assert all(r["deliveries"] == 1 for r in rows)
    assert all(r["sent_at"] >= r["scheduled_at"] for r in rows), "sent before its time"
    assert {r["subject"] for r in rows} == {f"Number {i}" for i in range(100)}
    detail = await (await client.get(f"/api/campaigns/{campaign_id}", headers=headers)).json()
    assert detail["status"] == "completed" and detail["progress"] == 1.0

    inbox = await (await client.get("/api/inbox?limit=500", headers=headers)).json()
    assert len(inbox["items"]) == 100
    first = inbox["items"][0]
    message = await (await client.get(f"/api/inbox/{first['id']}", headers=headers)).json()
    link = dict(message["headers"])["List-Unsubscribe"].strip("<>")  # the body lacks it: a footer
    assert (
        message["text"].replace("\r\n", "\n").strip()
        == f"Hello {first['to'][0]}\n\nUnsubscribe: {link}"
    )
    assert dict(message["headers"])["Message-ID"] == first["message_id"]

    sent = await (await client.get("/api/emails/sent?limit=500", headers=headers)).json()
    assert len(sent["items"]) == 100 and {i["status"] for i in sent["items"]} == {"sent"}


async def test_a_row_missing_a_cell_is_sent_with_an_empty_value(
    make_client: Start, store: Store, settings: Settings
) -> None:
    """`heidi@example.com` alone under `email,name` is accepted and delivered, with name ""."""
    client = await make_client(fast(settings, transport="capture"))
    headers = auth(await new_token(store))
    form = FormData()
    form.add_field("subject", "Hello{{ name }}!")
    form.add_field("body", "Dear {{ name }}, for {{ email }}.")
    form.add_field("recipients_file", b"email,name\nheidi@example.com\n", filename="p.csv")
    response = await client.post("/api/emails/schedule", data=form, headers=headers)
    assert response.status == 201, await response.json()

    async def delivered() -> bool:
        got = await (await client.get("/api/emails/sent", headers=headers)).json()
        return bool(got["items"]) and got["items"][0]["status"] in ("sent", "failed")

    await wait_for(delivered)
    item = (await (await client.get("/api/emails/sent", headers=headers)).json())["items"][0]
    assert item["status"] == "sent", item["error"]
    inbox = await (await client.get("/api/inbox", headers=headers)).json()
    assert inbox["items"][0]["subject"] == "Hello!"

    # A variable no column provides is refused when scheduling, naming it.
    form = FormData()
    form.add_field("subject", "s")
    form.add_field("body", "From {{ city }}")
    form.add_field("recipients_file", b"email,name\nheidi@example.com\n", filename="p.csv")
    response = await client.post("/api/emails/schedule", data=form, headers=headers)
    error = (await response.json())["error"]
    assert response.status == 422 and error["field"] == "body" and "city" in error["message"]


async def test_the_precheck_gives_the_schedules_verdicts(make_client: Start, store: Store) -> None:
    client = await make_client(roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    csv_bytes = b'email,name\nheidi@example.com\nbad,"two\nlines"\nada@example.com,Ada\n'
    checked = []
    for path in ("/api/compose/recipients", "/api/emails/schedule"):
        form = FormData()
        form.add_field("subject", "s")
        form.add_field("body", "Hi {{ name }}")
        form.add_field("recipients_file", csv_bytes, filename="p.csv")
        checked.append(await (await client.post(path, data=form, headers=headers)).json())
    precheck, scheduled = checked
    assert precheck["valid"] == scheduled["accepted"] == 2
    assert precheck["rejected"] == scheduled["rejected"]
    assert [r["line"] for r in precheck["rejected"]] == [3]
    assert precheck["first"] == {"email": "heidi@example.com", "vars": {"name": ""}}


async def test_healthz_answers_while_a_big_malformed_upload_is_parsed(
    make_client: Start, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parse runs off the event loop: /healthz is answered before the upload's answer."""
    client = await make_client(roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    started = threading.Event()
    real = recipients.normalize

    def spy(value: str) -> str:
        started.set()
        return real(value)

    monkeypatch.setattr(recipients, "normalize", spy)
    lines = 400_000
    csv_bytes = b"email,name\n" + b"".join(b"not-an-address-%d,x\n" % n for n in range(lines))
    form = FormData()
    form.add_field("subject", "s")
    form.add_field("body", "b")
    form.add_field("recipients_file", io.BytesIO(csv_bytes), filename="big.csv")
    order: list[str] = []
    upload = asyncio.create_task(client.post("/api/emails/schedule", data=form, headers=headers))
    upload.add_done_callback(lambda _: order.append("upload"))
    while not started.is_set() and not upload.done():  # noqa: ASYNC110 (a thread sets it)
        await asyncio.sleep(0.01)
    health = await client.get("/healthz")
    order.append("healthz")
    assert health.status == 200
    response = await upload
    assert order == ["healthz", "upload"]
    raw = await response.read()
    body = orjson.loads(raw)
    assert response.status == 422 and body["error"]["code"] == "no_valid_recipients"
    assert body["error"]["details"]["rejected_total"] == lines
    assert len(body["error"]["details"]["rejected"]) == 100
    assert len(raw) < 50_000  # the first rejected lines and a count, not every one


async def test_bodies_past_a_routes_cap_get_413_json(
    make_client: Start, store: Store, settings: Settings
) -> None:
    small = fast(settings, max_upload_bytes=64 * 1024, max_body_bytes=4096, max_recipients=3)
    client = await make_client(small, roles=frozenset({"api"}))
    headers = auth(await new_token(store))

    async def chunked(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    big_csv = b"email\n" + b"x@example.com\n" * 10_000
    form = FormData()
    form.add_field("subject", "s")
    form.add_field("body", "b")
    form.add_field("recipients_file", big_csv, filename="p.csv")
    sent = [
        await client.post("/api/emails/schedule", data=form, headers=headers),
        await client.post("/api/senders", data=b"{" + b" " * 5000 + b"}", headers=headers),
        await client.post(  # no Content-Length: the cap holds while the body streams in
            "/api/senders", data=chunked(b"{" + b" " * 5000 + b"}"), headers=headers
        ),
    ]
    streamed = (
        b'--b\r\nContent-Disposition: form-data; name="recipients_file"; filename="p.csv"\r\n'
        b"\r\n" + big_csv + b"\r\n--b--\r\n"
    )
    sent.append(
        await client.post(
            "/api/emails/schedule",
            data=chunked(streamed),
            headers={**headers, "Content-Type": "multipart/form-data; boundary=b"},
        )
    )
    for response in sent:
        error = (await response.json())["error"]
        assert response.status == 413, error
        assert error["code"] == "too_large" and error["field"] and error["message"]
    # Under the byte cap, over the recipient cap: 422 naming the field.
    form = FormData()
    form.add_field("subject", "s")
    form.add_field("body", "b")
    form.add_field("recipients_file", b"a@x.io\nb@x.io\nc@x.io\nd@x.io\n", filename="p.csv")
    response = await client.post("/api/emails/schedule", data=form, headers=headers)
    error = (await response.json())["error"]
    assert response.status == 422
    assert (error["code"], error["field"]) == ("too_many_recipients", "recipients_file")


async def test_malformed_ids_cursors_dates_and_bodies_name_the_field(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    ok = {"subject": "s", "body": "b", "recipients": ["a@example.com"]}
    cases: list[tuple[str, str, Any, int, str | None]] = [
        ("GET", "/api/campaigns/¹", None, 422, "id"),
        ("GET", f"/api/campaigns/{2**63}", None, 422, "id"),
        ("GET", f"/api/senders/{2**64}", None, 422, "id"),
        ("POST", "/api/campaigns/\u0661/pause", None, 422, "id"),  # an Arabic-Indic 1
        ("GET", "/api/campaigns?cursor=¹", None, 422, "cursor"),
        ("GET", f"/api/inbox?cursor={2**63}", None, 422, "cursor"),
        ("GET", "/api/emails/sent?limit=²", None, 422, "limit"),
        ("GET", "/api/emails/sent?cursor=WzEsMiwzXQ", None, 422, "cursor"),  # [1,2,3]
        ("GET", "/api/emails/scheduled?cursor=WyJ4IiwgMV0", None, 422, "cursor"),  # ["x", 1]
        ("POST", "/api/emails/schedule", {**ok, "start_at": "9999-12-31T23:59:59-23:59"}, 422,
         "start_at"),
        ("POST", "/api/emails/schedule", {**ok, "start_at": "0001-01-01T00:00:00+23:59"}, 422,
         "start_at"),
        ("POST", "/api/emails/schedule", {**ok, "hourly_limit": "¹"}, 422, "hourly_limit"),
        ("POST", "/api/emails/schedule", {**ok, "delay_between_ms": 2**64}, 422,
         "delay_between_ms"),
        ("POST", "/api/emails/schedule", {**ok, "sender": "¹"}, 422, "sender"),
        ("POST", "/api/emails/schedule", {**ok, "sender": 2**63}, 422, "sender"),
        ("POST", "/api/emails/schedule", {**ok, "sender": ["x"]}, 422, "sender"),
        ("POST", "/api/emails/schedule", {**ok, "start_at": "9998-12-31T00:00:00Z",
                                          "delay_between_ms": 86_400_000,
                                          "recipients": ["a@x.io", "b@x.io", "c@x.io"]}, 422,
         "delay_between_ms"),
        ("POST", "/api/emails/schedule", [1, 2], 400, None),
        ("POST", "/api/compose/preview", "just a string", 400, None),
        ("PATCH", "/api/senders/1", [], 400, None),
    ]  # fmt: skip
    for method, path, payload, status, field in cases:
        response = await client.request(method, path, json=payload, headers=headers)
        error = (await response.json())["error"]
        assert response.status == status, (path, payload, error)
        assert error.get("field") == field, (path, payload, error)
    for key in (secrets.token_urlsafe(4000), "caf\u00e9"):  # indexed: bounded, ASCII
        response = await client.post(
            "/api/emails/schedule", json=ok, headers={**headers, "Idempotency-Key": key}
        )
        error = (await response.json())["error"]
        assert (response.status, error["field"]) == (422, "Idempotency-Key"), error
    for content_type, raw in [
        ("multipart/form-data", b"--x\r\n\r\n--x--\r\n"),  # no boundary
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="s'),
    ]:
        for path in ("/api/emails/schedule", "/api/compose/recipients"):
            response = await client.post(
                path, data=raw, headers={**headers, "Content-Type": content_type}
            )
            error = (await response.json())["error"]
            assert (response.status, error["code"]) == (400, "invalid_multipart"), (path, error)


async def test_an_anonymous_form_is_held_to_the_small_cap_before_any_session_check(
    make_client: Start, settings: Settings
) -> None:
    """Dashboard forms are parsed before the session is looked up (the CSRF check reads
    them): without a session cookie of ours, a compose-sized body is refused unread."""
    small = fast(settings, max_upload_bytes=256 * 1024, max_body_bytes=4096)
    client = await make_client(small, roles=frozenset({"api"}))
    body = {"subject": "s", "body": "b", "recipients": "x@example.com\n" * 2000}  # ~28 KB
    anonymous = await client.post("/compose", data=body, allow_redirects=False)
    assert anonymous.status == 413, await anonymous.text()
    csrf = await dev_login(client)
    signed_in = await client.post(
        "/compose", data={**body, "csrf_token": csrf}, allow_redirects=False
    )
    assert signed_in.status != 413, await signed_in.text()
