"""axe-core (npm, tests/peers) in Debian's Chromium on every dashboard page, with content in
it (campaigns that sent, failed and wait, a captured message, a token, form errors): no
violations. And live updates announce one short status line, not a table per email."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.browser import HANG_MS
from .support.helpers import auth, wait_for

AXE = Path(__file__).parent / "peers" / "node_modules" / "axe-core" / "axe.min.js"
# Each rule's violations as "rule (impact): help — the nodes' selectors".
RUN_AXE = """async () => {
  const result = await axe.run(document, { resultTypes: ["violations"] });
  return result.violations.map(v =>
    `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map(n => n.target.join(" ")).join(", ")}`);
}"""


@pytest.fixture
async def browser_context(browser: Browser) -> AsyncIterator[BrowserContext]:
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `npm ci --prefix tests/peers` (make test does it)")
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(HANG_MS)
    # An init script runs outside the page's CSP: the pages are checked as they are served.
    await context.add_init_script(path=str(AXE))
    yield context
    await context.close()


async def _violations(page: Page, url: str) -> list[str]:
    response = await page.goto(url)
    assert response is not None and response.status in (200, 422), (url, response)
    await page.wait_for_load_state("load")
    found: list[str] = await page.evaluate(RUN_AXE)
    return found


async def _content(client: AppClient, store: Store, pool: asyncpg.Pool) -> dict[str, int]:
    """A sent campaign (with a captured message), a waiting one with failures, a token."""
    user = await store.ensure_user(DEV_EMAIL)
    headers = auth(await store.create_token(user.id, "a11y"))
    sent = await client.post(
        "/api/emails/schedule", headers=headers,
        json={"name": "Welcome", "subject": "Hi {{ email }}", "body": "b",
              "html": "<p>Hello <b>there</b></p>", "recipients": ["ada@example.com"]},
    )  # fmt: skip
    assert sent.status == 201, await sent.text()
    waiting = await client.post(
        "/api/emails/schedule", headers=headers,
        json={"subject": "Later", "body": "b", "hourly_limit": 2,
              "recipients": [f"r{i}@example.com" for i in range(6)]},
    )  # fmt: skip
    waiting_id = (await waiting.json())["campaign"]["id"]
    await wait_for(lambda: pool.fetchval("SELECT count(*) > 0 FROM captured_messages"))
    await pool.execute(
        """UPDATE dispatches SET status = 'failed', finished_at = now(), last_error = '550 no'
           WHERE id IN (SELECT id FROM dispatches WHERE campaign_id = $1 ORDER BY id LIMIT 2)""",
        waiting_id,
    )
    message_id = await pool.fetchval("SELECT min(id) FROM captured_messages")
    # A campaign over a pool of two senders (its pool table; compose's multiple select).
    second = await client.post(
        "/api/senders",
        headers=headers,
        json={"from_address": "two@example.com", "transport": "capture"},
    )
    first = (await sent.json())["campaign"]["sender"]["id"]
    pooled = await client.post(
        "/api/emails/schedule",
        headers=headers,
        json={
            "subject": "Pooled",
            "body": "b",
            "senders": [first, (await second.json())["id"]],
            "recipients": ["p1@example.com", "p2@example.com"],
        },
    )
    assert pooled.status == 201, await pooled.text()
    return {
        "sent": (await sent.json())["campaign"]["id"],
        "waiting": waiting_id,
        "message": message_id,
        "pooled": (await pooled.json())["campaign"]["id"],
    }


async def _sign_in(page: Page, base: str) -> None:
    await page.goto(f"{base}/")
    await page.get_by_role("button", name="Continue as dev user").click()
    await page.wait_for_url("**/emails")


async def test_axe_finds_no_violation_on_any_page(
    make_client: Start, store: Store, pool: asyncpg.Pool, browser_context: BrowserContext
) -> None:
    client = await make_client()
    base = str(client.make_url("")).rstrip("/")
    page = await browser_context.new_page()
    problems: dict[str, list[str]] = {}
    if found := await _violations(page, f"{base}/"):
        problems["/login"] = found
    await _sign_in(page, base)
    ids = await _content(client, store, pool)
    paths = [
        "/emails", "/emails?tab=sent", "/emails?tab=sent&status=nonsense", "/emails?q=nobody",
        "/campaigns", f"/campaigns/{ids['sent']}", f"/campaigns/{ids['waiting']}",
        f"/campaigns/{ids['pooled']}",
        "/compose", "/inbox", f"/inbox/{ids['message']}", "/tokens",
    ]  # fmt: skip
    for path in paths:
        if found := await _violations(page, base + path):
            problems[path] = found
    # The compose page with its errors shown (the no-script path re-renders them).
    await page.goto(f"{base}/compose")
    await page.get_by_role("button", name="Schedule").click()
    await expect(page.locator("[data-error-for]:not([hidden])").first).to_be_visible()
    if found := await page.evaluate(RUN_AXE):
        problems["/compose (errors shown)"] = found
    assert problems == {}, "\n".join(f"{p}: {v}" for p, vs in problems.items() for v in vs)


async def test_live_updates_announce_a_status_line_not_the_table(
    make_client: Start, store: Store, browser_context: BrowserContext
) -> None:
    client = await make_client(roles=frozenset({"api", "sweeper"}))
    base = str(client.make_url("")).rstrip("/")
    page = await browser_context.new_page()
    await _sign_in(page, base)
    user = await store.ensure_user(DEV_EMAIL)
    headers = auth(await store.create_token(user.id, "a11y"))
    made = await client.post("/api/emails/schedule", headers=headers, json={
        "subject": "Live", "body": "b", "recipients": ["ada@example.com", "alan@example.com"],
    })  # fmt: skip
    campaign_id = (await made.json())["campaign"]["id"]
    for path in ("/emails", f"/campaigns/{campaign_id}", "/campaigns", "/inbox"):
        await page.goto(base + path)
        live = page.locator("[data-live]")
        assert await live.get_attribute("aria-live") is None, f"{path} re-reads its region"
        assert await live.locator("[aria-live], [role=status], [role=alert]").count() == 0, path
    await page.goto(f"{base}/campaigns/{campaign_id}")
    announce = page.locator("[data-live-announce]")
    assert await announce.get_attribute("role") == "status"
    await expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
    await make_client(roles=frozenset({"worker"}))  # sends both; the page hears of it
    await expect(announce).to_have_text(re.compile(r"^2 of 2 done: 2 sent"))
    await expect(page.locator('[data-part="sent"]')).to_contain_text("2 sent")
