"""A campaign has an optional name, and the lists show it with the subject as its recipients
got it (not the raw template)."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth
from .support.web_session import csrf_of, dev_login

API = frozenset({"api"})
PEOPLE = "email,name\nada@example.com,Ada\nalan@example.com,Alan\n"


async def _headers(store: Store) -> dict[str, str]:
    user = await store.ensure_user(DEV_EMAIL)
    return auth(await store.create_token(user.id, "test"))


async def _schedule(client: AppClient, headers: dict[str, str], **fields: Any) -> Any:
    payload = {"subject": "Hi {{ name }}", "body": "b", "recipients_csv": PEOPLE, **fields}
    return await client.post("/api/emails/schedule", json=payload, headers=headers)


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


async def test_the_api_keeps_a_name_and_the_first_recipients_subject(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    headers = await _headers(store)
    made = await _schedule(client, headers, name="  Spring launch ")
    assert made.status == 201, await made.text()
    body = (await made.json())["campaign"]
    assert (body["name"], body["first_subject"], body["subject"]) == (
        "Spring launch", "Hi Ada", "Hi {{ name }}",
    )  # fmt: skip
    unnamed = await _schedule(client, headers)
    assert (await unnamed.json())["campaign"]["name"] is None
    listed = await (await client.get("/api/campaigns", headers=headers)).json()
    assert [(c["name"], c["first_subject"]) for c in listed["items"]] == [
        (None, "Hi Ada"), ("Spring launch", "Hi Ada"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "name", ["x" * 201, "two\nlines", 5, ["a"]], ids=["long", "lines", "number", "list"]
)
async def test_a_bad_name_is_a_field_error(make_client: Start, store: Store, name: Any) -> None:
    client = await make_client(roles=API)
    response = await _schedule(client, await _headers(store), name=name)
    assert response.status == 422, await response.text()
    assert (await response.json())["error"]["field"] == "name"


async def test_the_lists_show_the_name_and_rendered_subjects(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    await dev_login(client)
    made = await _schedule(client, await _headers(store), name="Spring launch")
    campaign_id = (await made.json())["campaign"]["id"]

    campaigns = await (await client.get("/campaigns")).text()
    row = re.search(rf'<tr data-campaign="{campaign_id}">(.*?)</tr>', campaigns, re.S)
    assert row, campaigns
    cell = _text(row.group(1))
    assert "Spring launch" in cell and "Hi Ada" in cell and "template: Hi {{ name }}" in cell

    emails = await (await client.get("/emails")).text()
    rows = re.findall(r"<tr data-dispatch=\"\d+\">(.*?)</tr>", emails, re.S)
    texts = [_text(r) for r in rows]
    assert any("ada@example.com" in t and "Hi Ada" in t and "Spring launch" in t for t in texts)
    assert any("alan@example.com" in t and "Hi Alan" in t for t in texts), texts
    assert "{{ name }}" not in emails

    page = await (await client.get(f"/campaigns/{campaign_id}")).text()
    assert "<h1>Spring launch</h1>" in page


async def test_the_compose_form_names_a_campaign_without_javascript(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    await dev_login(client)
    page = await (await client.get("/compose")).text()
    assert 'id="name" name="name"' in page
    form = {"csrf_token": csrf_of(page), "name": "Newsletter 12", "subject": "Hello",
            "body": "b", "recipients_csv": "ada@example.com"}  # fmt: skip
    response = await client.post("/compose", data=form)
    assert response.status == 200 and response.url.path == "/emails", await response.text()
    listed = await (await client.get("/api/campaigns", headers=await _headers(store))).json()
    assert listed["items"][0]["name"] == "Newsletter 12"
