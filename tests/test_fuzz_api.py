"""A property-based run of malformed requests over every route of the real app (hypothesis).

Tenant B owns campaigns, senders and delivered emails, all carrying a marker string. Tenant
A (a dashboard session and an API token) sends bad ids (B's real ones too), huge numbers,
unicode digits, bad cursors and dates, wrong JSON types, broken multipart and oversized
bodies to every route the app's router lists, so a new route cannot be left out. Asserted:
no 5xx, every /api/ error is `{"error": {"code", "message", ...}}`, and no answer to A ever
contains B's marker. Hypothesis runs in a thread; each request is sent on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .conftest import fast
from .support.app_client import AppClient, Start
from .support.helpers import auth, wait_for
from .support.provider_signers import sendgrid_key
from .support.web_session import dev_login

MARKER = "zqxB7marker"  # in B's subjects, bodies, addresses and sender names
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# Every field a route's handler reads: the fuzz fills them with hostile values.
FIELDS = [
    "subject", "body", "html", "recipients", "recipients_csv", "start_at", "delay_between_ms",
    "hourly_limit", "sender", "recipient", "from_address", "display_name", "reply_to",
    "transport", "min_gap_ms", "settings", "send_test_message", "start_local", "tz_offset",
    "delay_seconds", "next", "csrf_token", "daily_limit", "delay_jitter_ms", "name",
    "expires_in", "transactional", "List-Unsubscribe", "senders",
    "emails", "email", "reason", "detail", "file", "steps",
]  # fmt: skip
FORGED = "a" * 29  # an unsubscribe token of the right shape (/u/{token}) whose MAC is wrong
# Every provider webhook mounted (builtins/provider_webhooks), so the fuzz reaches them too.
PROVIDER_WEBHOOKS = {
    "DISPATCH_SES_TOPIC_ARNS": "arn:aws:sns:us-east-1:123456789012:fuzz",
    "DISPATCH_SENDGRID_PUBLIC_KEY": sendgrid_key()[1],
    "DISPATCH_MAILGUN_SIGNING_KEY": "fuzz-key",
    "DISPATCH_POSTMARK_CREDENTIALS": "fuzz:fuzz",
}
JSON_ERROR_PREFIXES = ("/api/", "/hooks/")
MODES = ["token", "session", "form"]  # A's API token; A's session (+ CSRF header); form only
QUERY_KEYS = ["limit", "cursor", "scheduled_cursor", "sent_cursor", "scheduled", "cancel_queued",
              "tab", "status", "campaign_id", "sender_id", "q", "after", "before",
              "email", "state"]  # fmt: skip
# A's query values are drawn from HOSTILE and these (B's suppressed address among them).
QUERY_EXTRA = ["b-gone@b.example"]
HOSTILE = [
    "", "0", "-1", "¹", "١٢", "٣", "1e3", "1_000", " 7 ", "0x10", "NaN", "inf", "null", "[]",
    str(2**63), str(2**63 - 1), str(2**64), "9" * 30, "9" * 5000, "true", "ǅ", "\x00", "%00",
    "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-02-30T00:00:00Z",
    "2026-01-01T00:00:00", "99999-01-01T00:00:00Z", "eyJ4Ijog", "W10", "WyJ4IiwgMV0",
    "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwgOTk5OTk5OTk5OTk5OTk5OTk5OTldCg", "bm90IGpzb24",
    "WzEsMiwzXQ", "../../etc/passwd", "a@b", "x" * 10_000, "{{ 7 * 7 }}", "\r\nBcc: x@y.z",
]  # fmt: skip
JSON_VALUES = st.one_of(
    st.sampled_from(HOSTILE),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.sampled_from([*HOSTILE, "a@example.com"]), max_size=4),
    st.dictionaries(st.sampled_from(["email", "vars", "x"]), st.sampled_from(HOSTILE), max_size=3),
)
BROKEN_MULTIPART = [
    ("multipart/form-data", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nb\r\n--x--"),
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=\"a\""),
    ("multipart/form-data; boundary=x", b"--x\r\n\r\n\r\n--x--\r\n"),
    ("multipart/form-data; boundary=x", b"garbage without a boundary"),
    ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="recipi'),
    ("multipart/mixed; boundary=", b"--\r\n"),
    ("multipart/form-data; boundary=x",
     b'--x\r\nContent-Disposition: form-data; name="recipients_file"; filename="a.csv"\r\n'
     b"Content-Type: text/csv\r\n\r\n\xff\xfe\x00email\r\n--x--\r\n"),
    ("application/x-www-form-urlencoded; charset=nope", b"a=b"),
    ("application/x-www-form-urlencoded", b"subject=%ZZ&body=%&&=&recipients_csv=%FF"),
]  # fmt: skip


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # canonical, with {name} parameters


@dataclass
class Fuzz:
    client: AppClient
    loop: asyncio.AbstractEventLoop
    a_headers: dict[str, str]
    csrf: str
    b_ids: list[str]
    sent: Counter[Route] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def app_routes(client: AppClient) -> list[Route]:
    """Every route the router lists (HEAD twins and static files aside)."""
    found = set()
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if route.method == "HEAD" or "directory" in info or route.resource is None:
            continue
        found.add(Route(route.method, route.resource.canonical))
    return sorted(found, key=lambda r: (r.path, r.method))


def bodies() -> st.SearchStrategy[tuple[str | None, bytes]]:
    """(content type, body): hostile JSON objects, non-objects, bad JSON, broken forms."""
    objects = st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6)
    return st.one_of(
        # the stdlib's encoder: orjson refuses integers past 64 bits, and those are hostile input
        objects.map(lambda o: ("application/json", json.dumps(o).encode())),
        st.sampled_from([b"[]", b"1", b'"x"', b"null", b"{", b"{nope", b"\xff\xfe", b""]).map(
            lambda raw: ("application/json", raw)
        ),
        st.sampled_from(BROKEN_MULTIPART),
        st.just(("application/json", b'{"subject": "' + b"x" * (80 * 1024**1) + b'"}')),
        st.builds(lambda: (None, b"")),
    )


@st.composite
def requests(draw: st.DrawFn, routes: list[Route], b_ids: list[str]) -> tuple[Any, ...]:
    route = draw(st.sampled_from(routes))
    path = route.path
    for name in re.findall(r"{(\w+)}", path):
        value = draw(st.sampled_from([*HOSTILE[:24], *b_ids, "dev", "google", "oidc", FORGED]))
        path = path.replace("{" + name + "}", value.replace("/", "%2F") or "0")
    short = [v for v in HOSTILE if len(v) < 1000]  # a longer URL is refused by aiohttp itself
    values = st.sampled_from([*short, *QUERY_EXTRA])
    query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), values, max_size=3))
    content_type, body = draw(bodies()) if route.method in BODY_METHODS else (None, b"")
    return route, path, query, content_type, body, draw(st.sampled_from(MODES))


async def send(fuzz: Fuzz, req: tuple[Any, ...]) -> None:
    route, path, query, content_type, body, mode = req
    headers = dict(fuzz.a_headers) if mode == "token" else {}
    # "form": the CSRF check must read the (broken) body itself. /logout never gets a
    # valid token: it would sign A out for the rest of the run.
    if mode == "session" and route.path != "/logout":
        headers["X-CSRF-Token"] = fuzz.csrf
    if content_type:
        headers["Content-Type"] = content_type
    fuzz.sent[route] += 1
    query_string = "&".join(f"{k}={v}" for k, v in query.items())
    url = path + ("?" + query_string if query_string else "")
    try:
        async with fuzz.client.request(
            route.method, url, data=body or None, headers=headers, allow_redirects=False
        ) as response:
            if response.content_type == "text/event-stream":
                raw = await asyncio.wait_for(response.content.readany(), 5)
            else:
                raw = await response.read()
    except ValueError:  # the client refused to send it (e.g. a path it cannot encode)
        return
    where = f"{route.method} {url[:120]} ({content_type}, {len(body)} bytes): {response.status}"
    if response.status >= 500:
        fuzz.problems.append(f"5xx: {where} {raw[:300]!r}")
    if MARKER.encode() in raw or MARKER.lower().encode() in raw.lower():
        fuzz.problems.append(f"tenant B's data in: {where}")
    if path.startswith(JSON_ERROR_PREFIXES) and response.status >= 400:
        try:
            error = orjson.loads(raw)["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str)
        except Exception:
            fuzz.problems.append(f"not a JSON error: {where} {raw[:200]!r}")


async def _tenants(client: AppClient, store: Store) -> tuple[dict[str, str], str, list[str]]:
    """A signs in (session + token); B schedules and sends campaigns carrying the marker."""
    csrf = await dev_login(client)
    me = await (await client.get("/api/me")).json()
    a_headers = auth(await store.create_token(me["id"], "fuzz"))
    b_user = await store.ensure_user(f"owner-{MARKER}@b.example", f"B {MARKER}")
    b = auth(await store.create_token(b_user.id, "fuzz"))
    sender = await (
        await client.post(
            "/api/senders",
            json={
                "from_address": f"{MARKER}@b.example",
                "display_name": MARKER,
                "transport": "capture",
            },
            headers=b,
        )
    ).json()
    b_ids = [str(sender["id"])]
    for n in range(2):
        payload = {
            "subject": f"{MARKER} {n}",
            "body": f"{MARKER} body",
            "recipients_csv": f"email,note\n{MARKER}{n}@b.example,{MARKER}\nseq{n}@b.example,x\n",
            "sender": sender["id"],
            # B's recipients are in a sequence: A must not list or stop them.
            "steps": [{"after_days": 365, "body": f"{MARKER} again"}],
        }
        made = await (await client.post("/api/emails/schedule", json=payload, headers=b)).json()
        b_ids.append(str(made["campaign"]["id"]))
    b_token = await client.post("/api/tokens", json={"name": MARKER}, headers=b)
    b_ids.append(str((await b_token.json())["id"]))  # listed to A, it would carry the marker
    # Its detail carries the marker; its address (not: A's own input is echoed in errors)
    # is among the path values, so A's look-ups and removals name it.
    suppressed = {"emails": ["b-gone@b.example"], "detail": MARKER}
    assert (await client.post("/api/suppressions", json=suppressed, headers=b)).status == 201
    b_ids.append("b-gone@b.example")
    a_payload = {"subject": "A's", "body": "hi", "recipients": ["a1@a.example"]}
    assert (await client.post("/api/emails/schedule", json=a_payload, headers=a_headers)).ok

    async def b_delivered() -> bool:
        inbox = await (await client.get("/api/inbox", headers=b)).json()
        return len(inbox["items"]) >= 2

    await wait_for(b_delivered)
    inbox = await (await client.get("/api/inbox", headers=b)).json()
    b_ids += [str(m["id"]) for m in inbox["items"]]
    sent = await (await client.get("/api/emails/sent", headers=b)).json()
    b_ids += [str(m["id"]) for m in sent["items"]]
    b_ids.append("seq0@b.example")  # a sequence's recipient, in /recipients/{email}
    return a_headers, csrf, b_ids


@pytest.mark.timeout(120)  # 320 requests drawn by hypothesis, then the worst cases per route
async def test_malformed_requests_to_every_route(
    make_client: Start, store: Store, settings: Settings
) -> None:
    small = fast(settings, max_body_bytes=64 * 1024, max_upload_bytes=1024**2).with_environ(
        **PROVIDER_WEBHOOKS
    )
    client = await make_client(small)
    a_headers, csrf, b_ids = await _tenants(client, store)
    routes = app_routes(client)
    fuzz = Fuzz(client, asyncio.get_running_loop(), a_headers, csrf, b_ids)

    def run(req: tuple[Any, ...]) -> None:
        asyncio.run_coroutine_threadsafe(send(fuzz, req), fuzz.loop).result(timeout=60)

    @hsettings(
        max_examples=320,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(requests(routes, b_ids))
    def fuzz_run(req: tuple[Any, ...]) -> None:
        run(req)

    await asyncio.to_thread(fuzz_run)
    # Each route, whatever hypothesis drew, also gets a fixed set of the worst cases.
    for route in routes:
        for value in ("¹", str(2**63), "9999-12-31T23:59:59-23:59", b_ids[1]):
            query = {"limit": value, "cursor": value}
            path = re.sub(r"{\w+}", value, route.path)
            cases = BROKEN_MULTIPART[:2] if route.method in BODY_METHODS else [(None, b"")]
            for content_type, body in cases:
                for mode in MODES:
                    await send(fuzz, (route, path, query, content_type, body, mode))

        for content_type, body in BROKEN_MULTIPART if route.method in BODY_METHODS else []:
            path = re.sub(r"{\w+}", b_ids[0], route.path)
            for mode in MODES:
                await send(fuzz, (route, path, {}, content_type, body, mode))

    assert not fuzz.problems, "\n".join(fuzz.problems[:20])
    assert sum(fuzz.sent.values()) >= 300
    missing = [f"{r.method} {r.path}" for r in routes if fuzz.sent[r] == 0]
    assert not missing, f"routes the fuzz run never reached: {missing}"
    # B's campaigns were neither paused nor cancelled by A's requests on their ids.
    rows = await store.pool.fetch(
        "SELECT status FROM campaigns WHERE subject LIKE $1", f"{MARKER}%"
    )
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"running", "completed", "scheduled"}
    # B's suppression is still there, whatever A sent to remove it.
    kept = await store.pool.fetchval("SELECT count(*) FROM suppressions WHERE detail = $1", MARKER)
    assert kept == 1
    stopped = await store.pool.fetchval(
        "SELECT count(*) FROM sequence_members WHERE state NOT IN ('active', 'waiting')"
    )
    assert stopped == 0  # no stop of A's reached B's recipients
