"""The dashboard's Suppressions page: list with paging and look-up, add, remove, import and
export through CSRF-checked forms, and only the signed-in user's entries."""

from __future__ import annotations

import re

import aiohttp
from playwright.async_api import Browser, FilePayload, expect

from dispatch_engine.store import Store

from .support.app_client import Start
from .support.browser import snapshot
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


async def test_the_page_and_the_compose_check_in_a_real_browser(
    make_client: Start, browser: Browser
) -> None:
    """Chromium: the nav link, add by the form, import a file, then the compose page's
    recipients check lists the suppressed address as a rejected line; remove."""
    client = await make_client(roles=API)
    ctx = await browser.new_context(base_url=str(client.make_url("/")).rstrip("/"))
    try:
        page = await ctx.new_page()
        await page.goto("/login")
        await page.get_by_role("button", name="Continue as dev user").click()
        await page.wait_for_url("**/emails")
        await page.get_by_role("link", name="Suppressions").click()
        await page.wait_for_url("**/suppressions")
        await page.get_by_label("Addresses, one a line").fill("Bob@BÜCHER.example")
        await page.get_by_role("button", name="Suppress").click()
        await expect(page.locator("[data-suppression-result]")).to_contain_text("1 address added")
        await page.get_by_label("CSV file").set_input_files(
            files=[FilePayload(name="old.csv", mimeType="text/csv",
                               buffer=b"email,reason\ncarol@example.com,unsubscribed\n")]
        )  # fmt: skip
        await page.get_by_role("button", name="Import").click()
        rows = page.locator("tr[data-suppression]")
        await expect(rows).to_have_count(2)
        await expect(rows.nth(1)).to_contain_text("bob@xn--bcher-kva.example")
        await snapshot(page, "suppressions")

        await page.get_by_role("link", name="Compose", exact=True).click()
        await page.get_by_label("…or paste addresses").fill(
            "ann@example.com\nbob@xn--bcher-kva.example\ncarol@example.com\n"
        )
        report = page.locator("[data-recipients-report]")
        await expect(report.locator("[data-valid-count]")).to_have_text(
            "1 valid address found, 2 lines rejected."
        )
        rejected = report.get_by_role("table", name="Rejected lines").locator("tbody tr")
        await expect(rejected.nth(0)).to_contain_text("suppressed: manual on")
        await expect(rejected.nth(1)).to_contain_text("suppressed: unsubscribed on")

        await page.goto("/suppressions")
        await page.get_by_role("button", name="Remove carol@example.com").click()
        await expect(page.get_by_text("was removed")).to_be_visible()
        await expect(rows).to_have_count(1)
    finally:
        await ctx.close()
