"""The emails lists: Scheduled and Sent as tabs with counts, filters by status, campaign,
sender and address (API and page, each parameter checked: a 4xx naming it), pages forward
and back that keep the filters, and never another owner's emails."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import asyncpg
import pytest

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth
from .support.web_session import dev_login

API = frozenset({"api"})
FUTURE = "2099-01-01T00:00:00Z"


async def _token(store: Store, email: str = DEV_EMAIL) -> dict[str, str]:
    user = await store.ensure_user(email)
    return auth(await store.create_token(user.id, "test"))


async def _schedule(client: AppClient, headers: dict[str, str], recipients: list[str],
                    **fields: Any) -> int:  # fmt: skip
    payload = {"subject": "s", "body": "b", "recipients": recipients, "start_at": FUTURE,
               "delay_between_ms": 1000, **fields}  # fmt: skip
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201, await response.text()
    campaign_id: int = (await response.json())["campaign"]["id"]
    return campaign_id


async def _finish(pool: asyncpg.Pool, recipient: str, status: str) -> None:
    await pool.execute(
        "UPDATE dispatches SET status = $2, finished_at = now() WHERE recipient = $1",
        recipient,
        status,
    )


async def _emails(client: AppClient, headers: dict[str, str], tab: str, **query: str) -> Any:
    response = await client.get(f"/api/emails/{tab}", params=query, headers=headers)
    assert response.status == 200, await response.text()
    return [item["email"] for item in (await response.json())["items"]]


async def test_the_api_filters_each_list(
    make_client: Start, store: Store, pool: asyncpg.Pool
) -> None:
    client = await make_client(roles=API)
    headers = await _token(store)
    first = await _schedule(client, headers, ["ada@example.com", "a_b@example.com"])
    sender = await client.post(
        "/api/senders", json={"from_address": "news@example.com", "transport": "capture"},
        headers=headers,
    )  # fmt: skip
    sender_id = (await sender.json())["id"]
    second = await _schedule(
        client, headers, ["alan@other.org", "abba@example.com"], sender="news@example.com"
    )
    await _finish(pool, "alan@other.org", "bounced")
    await _finish(pool, "abba@example.com", "sent")

    assert await _emails(client, headers, "scheduled") == ["ada@example.com", "a_b@example.com"]
    assert await _emails(client, headers, "scheduled", q="_") == ["a_b@example.com"]
    assert await _emails(client, headers, "scheduled", q=" ADA ") == ["ada@example.com"]
    assert await _emails(client, headers, "scheduled", q="%") == []
    assert await _emails(client, headers, "scheduled", campaign_id=str(second)) == []
    assert len(await _emails(client, headers, "scheduled", campaign_id=str(first))) == 2
    assert sorted(await _emails(client, headers, "sent")) == ["abba@example.com", "alan@other.org"]
    assert await _emails(client, headers, "sent", status="bounced") == ["alan@other.org"]
    assert len(await _emails(client, headers, "sent", sender_id=str(sender_id))) == 2
    assert await _emails(client, headers, "scheduled", sender_id=str(sender_id)) == []
    assert await _emails(client, headers, "sent", status="sent", q="alan") == []


@pytest.mark.parametrize(
    ("tab", "query", "field"),
    [
        ("scheduled", {"status": "sent"}, "status"),
        ("sent", {"status": "scheduled"}, "status"),
        ("sent", {"status": "nonsense"}, "status"),
        ("sent", {"campaign_id": "abc"}, "campaign_id"),
        ("sent", {"campaign_id": "0"}, "campaign_id"),
        ("scheduled", {"sender_id": str(2**63)}, "sender_id"),
        ("scheduled", {"q": "x" * 321}, "q"),
        ("scheduled", {"q": "a\x00b"}, "q"),
    ],
)
async def test_a_bad_filter_is_a_4xx_naming_it(
    make_client: Start, store: Store, tab: str, query: dict[str, str], field: str
) -> None:
    client = await make_client(roles=API)
    response = await client.get(f"/api/emails/{tab}", params=query, headers=await _token(store))
    body = await response.json()
    assert response.status == 422 and body["error"]["field"] == field, body


async def test_filters_never_reach_another_owners_emails(make_client: Start, store: Store) -> None:
    client = await make_client(roles=API)
    mine, theirs = await _token(store), await _token(store, "eve@example.com")
    their_campaign = await _schedule(client, theirs, ["secret@example.com"])
    await _schedule(client, mine, ["ada@example.com"])
    assert await _emails(client, mine, "scheduled", campaign_id=str(their_campaign)) == []
    assert await _emails(client, mine, "scheduled", q="secret") == []
    await dev_login(client)
    page = await (await client.get("/emails", params={"q": "secret"})).text()
    assert "secret@example.com" not in page


def _rows(html: str) -> list[str]:
    cells = re.findall(r'<td class="email"[^>]*>([^<]*)</td>', html)
    return [unescape(c) for c in cells]


def _link(html: str, rel: str) -> str | None:
    found = re.search(rf'href="(/emails\?[^"]+)" rel="{rel}"', html)
    return unescape(found.group(1)) if found else None


async def test_the_page_has_tabs_with_counts_and_filters(
    make_client: Start, store: Store, pool: asyncpg.Pool
) -> None:
    client = await make_client(roles=API)
    headers = await _token(store)
    campaign = await _schedule(client, headers, ["ada@example.com", "alan@example.com"],
                               name="Spring")  # fmt: skip
    await _schedule(client, headers, ["grace@example.com"])
    await _finish(pool, "alan@example.com", "complained")
    await dev_login(client)

    html = await (await client.get("/emails")).text()
    counts = dict(re.findall(r'data-tab-count="(\w+)">([^<]+)<', html))
    assert counts == {"scheduled": "2", "sent": "1"}
    assert _rows(html) == ["ada@example.com", "grace@example.com"]

    html = await (await client.get("/emails", params={"campaign_id": str(campaign)})).text()
    assert _rows(html) == ["ada@example.com"]
    assert dict(re.findall(r'data-tab-count="(\w+)">([^<]+)<', html)) == {
        "scheduled": "1", "sent": "1",
    }  # fmt: skip
    sent_tab = re.search(r'href="([^"]+)" data-tab="sent"', html)
    assert sent_tab and f"campaign_id={campaign}" in unescape(sent_tab.group(1))
    sent = await (await client.get(unescape(sent_tab.group(1)))).text()
    assert _rows(sent) == ["alan@example.com"] and "complained" in sent

    bad = await client.get("/emails", params={"tab": "sent", "status": "scheduled"})
    assert bad.status == 422
    page = await bad.text()
    assert 'data-filter-error="status"' in page and "is not a status of the sent list" in page
    assert _rows(page) == []


async def test_the_page_walks_forward_and_back_keeping_the_filter(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    headers = await _token(store)
    wanted = [f"user{i:02}@example.com" for i in range(60)]
    await _schedule(client, headers, [*wanted, *[f"other{i}@example.com" for i in range(5)]])
    await dev_login(client)

    pages: list[list[str]] = []
    url: str | None = "/emails?q=user"
    while url:
        html = await (await client.get(url)).text()
        pages.append(_rows(html))
        url = _link(html, "next")
        assert url is None or "q=user" in url
    assert [len(p) for p in pages] == [25, 25, 10]
    assert [e for p in pages for e in p] == wanted

    back: list[list[str]] = [pages[-1]]
    url = _link(html, "prev")
    while url:
        html = await (await client.get(url)).text()
        back.append(_rows(html))
        url = _link(html, "prev")
    assert back == list(reversed(pages))
    assert _link(html, "next") is not None  # the first page, reached going back
