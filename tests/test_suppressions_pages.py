"""The dashboard's Suppressions page: list with paging and look-up, add, remove, import and
export through CSRF-checked forms, and only the signed-in user's entries."""

from __future__ import annotations

import re

import aiohttp

from dispatch_engine.store import Store

from .support.app_client import Start
from .support.web_session import dev_login

API = frozenset({"api"})
ROW = re.compile(r'data-suppression="([^"]+)"')


async def test_the_page_adds_pages_looks_up_removes_imports_and_exports(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    csrf = await dev_login(client)
    page = await client.get("/suppressions")
    html = await page.text()
    assert page.status == 200 and 'href="/suppressions"' in html  # in the nav
    assert "No suppressed addresses yet." in html

    emails = "\n".join(f"User{n}@Example.com" for n in range(30)) + "\nnot an address\n"
    added = await client.post(
        "/suppressions", data={"csrf_token": csrf, "emails": emails, "detail": "by phone"}
    )
    html = await added.text()
    assert added.status == 200 and "30 addresses added" in html and "1 refused" in html
    assert "not an address" in html  # the refused one, with why
    first = ROW.findall(html)
    assert len(first) == 25 and first[0] == "user29@example.com"
    older = re.search(r'href="(/suppressions\?cursor=\d+)"', html)
    assert older is not None
    rest = ROW.findall(await (await client.get(older.group(1))).text())
    assert rest == [f"user{n}@example.com" for n in range(4, -1, -1)]

    found = await (await client.get("/suppressions?email=USER7@example.COM")).text()
    assert ROW.findall(found) == ["user7@example.com"]

    removed = await client.post(
        "/suppressions/remove", data={"csrf_token": csrf, "email": "user7@example.com"}
    )
    assert removed.status == 200 and removed.url.query.get("removed") == "user7@example.com"
    assert (
        ROW.findall(await (await client.get("/suppressions?email=user7@example.com")).text()) == []
    )

    form = aiohttp.FormData()
    form.add_field("csrf_token", csrf)
    form.add_field("file", b"email,reason\ncarol@example.com,complaint\nbad,\n",
                   filename="list.csv", content_type="text/csv")  # fmt: skip
    imported = await client.post("/suppressions/import", data=form)
    html = await imported.text()
    assert imported.status == 200 and "1 address added" in html and "bad" in html

    export = await client.get("/suppressions/export")
    text = await export.text()
    assert export.status == 200 and export.content_type == "text/csv"
    assert text.startswith("email,reason,source,detail,created_at\r\n")
    assert "carol@example.com,complaint,csv,," in text and text.count("\r\n") == 1 + 30


async def test_the_forms_refuse_a_missing_csrf_token_and_show_only_ones_own_entries(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    csrf = await dev_login(client)
    eve = await store.ensure_user("eve@example.com", "Eve")
    await store.suppress(eve.id, ["eves-secret@example.com"], "complaint", "ses")

    refused = await client.post("/suppressions", data={"emails": "x@example.com"})
    assert refused.status == 403
    html = await (await client.get("/suppressions")).text()
    assert ROW.findall(html) == [] and "eves-secret" not in html
    looked_up = await (await client.get("/suppressions?email=eves-secret@example.com")).text()
    assert "eves-secret@example.com is not on your list." in looked_up
    assert ROW.findall(looked_up) == []
    removal = await client.post(
        "/suppressions/remove", data={"csrf_token": csrf, "email": "eves-secret@example.com"}
    )
    assert removal.status == 404
    assert (await store.suppression(eve.id, "eves-secret@example.com")) is not None
    assert "eves-secret" not in await (await client.get("/suppressions/export")).text()
