"""The dashboard in headless Chromium against the real app: login, compose with a CSV upload,
schedule, rows under Scheduled moving to Sent live (SSE), the inbox preview, the campaign
buttons, and the same pages with JavaScript off."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, FilePayload, Page, expect

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.queue import RedisQueue
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.browser import HANG_MS, snapshot
from .support.helpers import auth

PEOPLE = (
    "email,name\n"
    "ada@example.com,Ada\n"
    "not an address,Bob\n"
    "alan@example.com,Alan\n"
    "grace@example.com,Grace\n"
    "ada@example.com,Ada again\n"
)


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[Callable[..., Awaitable[Page]]]:
    """New pages in fresh browser contexts (cookies of their own); closed after the test."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    async def open_page(base_url: str, **options: Any) -> Page:
        ctx = await browser.new_context(
            base_url=base_url, viewport={"width": 1280, "height": 860}, **options
        )
        ctx.set_default_timeout(HANG_MS)
        contexts.append(ctx)
        page = await ctx.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        return page

    yield open_page
    for ctx in contexts:
        await ctx.close()
    assert errors == [], f"script errors on the page: {errors}"


async def _dev_login(page: Page) -> None:
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await snapshot(page, "login")
    await page.get_by_role("button", name="Continue as dev user").click()
    await page.wait_for_url("**/emails")
    header = page.locator("header")
    await expect(header.get_by_text("Dev User")).to_be_visible()
    await expect(header.get_by_text(DEV_EMAIL)).to_be_visible()
    await expect(header.get_by_role("button", name="Log out")).to_be_visible()


async def test_compose_schedule_and_watch_emails_go_out_live(
    make_client: Start, context: Callable[..., Awaitable[Page]], store: Store
) -> None:
    # No worker yet: the scheduled rows stay put until one starts (in another app instance,
    # so the live update travels through Redis pub/sub as it would between processes).
    client = await make_client(roles=frozenset({"api", "sweeper"}))
    page = await context(str(client.make_url("")), timezone_id="America/New_York")
    await _dev_login(page)
    await expect(page.locator("#scheduled")).to_contain_text("Nothing is waiting to be sent")

    await page.get_by_role("link", name="Compose", exact=True).click()
    await page.get_by_label("Subject").fill("Hello {{ name }}")
    await page.get_by_label("Body").fill("Hi {{ name }},\nthis is for {{ email }}.")
    await page.locator("summary", has_text="HTML version").click()
    await page.get_by_label("HTML version").fill(
        "<p>Hi <b>{{ name }}</b>!</p><script>alert('x')</script>"
    )
    await page.get_by_label("Upload a CSV or TXT file").set_input_files(
        files=[FilePayload(name="people.csv", mimeType="text/csv", buffer=PEOPLE.encode())]
    )
    report = page.locator("[data-recipients-report]")
    await expect(report.locator("[data-valid-count]")).to_have_text(
        "3 valid addresses found, 2 lines rejected."
    )
    rejected = report.get_by_role("table", name="Rejected lines").locator("tbody tr")
    await expect(rejected).to_have_count(2)
    await expect(rejected.nth(0)).to_contain_text("3not an address")
    await expect(rejected.nth(1)).to_contain_text("duplicate of line 2")
    await expect(report).to_contain_text("{{ name }}")

    # The preview renders the first recipient's email; its HTML is sanitized and sandboxed.
    await expect(page.locator("[data-preview-subject]")).to_have_text("Hello Ada")
    await expect(page.locator("[data-preview-text]")).to_have_text(
        "Hi Ada,\nthis is for ada@example.com."
    )
    frame = page.locator("[data-preview-html]")
    await expect(page.frame_locator("[data-preview-html]").locator("b")).to_have_text("Ada")
    srcdoc = await frame.get_attribute("srcdoc") or ""
    assert "<b>Ada</b>" in srcdoc and "<script" not in srcdoc
    assert await frame.get_attribute("sandbox") == ""

    # A server error is shown next to its field.
    await page.get_by_label("Hourly limit").fill("0")
    await page.get_by_role("button", name="Schedule").click()
    error = page.locator("#error-hourly_limit")
    await expect(error).to_have_text("Hourly limit must be a whole number from 1 to 1,000,000,000")
    await expect(page.get_by_label("Hourly limit")).to_have_attribute("aria-invalid", "true")
    await page.get_by_label("Hourly limit").fill("")
    await page.get_by_label("Delay between emails").fill("0.01")
    # The start is the reader's local time (already past here, so it sends at once).
    await expect(page.get_by_text("America/New_York; empty = now")).to_be_visible()
    await page.get_by_label("Start").fill("2020-01-01T10:00:00")
    await expect(page.frame_locator("[data-preview-html]").locator("b")).to_have_text("Ada")
    await snapshot(page, "compose")

    await page.get_by_role("button", name="Schedule").click()
    await page.wait_for_url("**/emails?scheduled=*")
    await expect(page.get_by_role("status").filter(has_text="scheduled: 3 emails")).to_be_visible()
    scheduled = page.locator("#scheduled tbody tr")
    await expect(scheduled).to_have_count(3)
    for n, email in enumerate(["ada@example.com", "alan@example.com", "grace@example.com"]):
        await expect(scheduled.nth(n)).to_contain_text(email)
        await expect(scheduled.nth(n)).to_contain_text("scheduled")
    await expect(scheduled.nth(0)).to_contain_text("Jan 1, 2020, 10:00:00 AM")
    first = await store.pool.fetchval("SELECT min(scheduled_at) FROM dispatches")
    assert first == datetime(2020, 1, 1, 15, 0, tzinfo=UTC), "stored in UTC"
    await expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
    await snapshot(page, "emails-scheduled")

    await page.evaluate("window.stillTheSamePage = true")
    await make_client(roles=frozenset({"worker"}))
    await expect(page.locator("#scheduled")).to_contain_text("Nothing is waiting to be sent")
    await expect(page.locator('[data-tab-count="sent"]')).to_have_text("3")
    assert await page.evaluate("window.stillTheSamePage") is True, "the page was reloaded"
    await (
        page.get_by_role("navigation", name="Email lists").get_by_role("link", name="Sent").click()
    )
    sent = page.locator("#sent tbody tr")
    await expect(sent).to_have_count(3)
    await expect(sent.filter(has_text="grace@example.com")).to_contain_text("sent")
    await snapshot(page, "emails-sent")

    await page.get_by_role("link", name="Inbox", exact=True).click()
    messages = page.locator(".messages li")
    await expect(messages).to_have_count(3)
    await snapshot(page, "inbox")
    await messages.filter(has_text="ada@example.com").get_by_role("link").click()
    await expect(page.get_by_role("heading", name="Hello Ada")).to_be_visible()
    await expect(page.locator(".message-text")).to_have_text(  # the body lacks the link: a footer
        re.compile(
            r"^Hi Ada,\nthis is for ada@example\.com\.\n\nUnsubscribe: http\S+/u/[a-z2-7]{29}$"
        )
    )
    html = page.locator("iframe.message-html")
    sandbox = await html.get_attribute("sandbox") or ""
    assert "allow-scripts" not in sandbox and "allow-same-origin" not in sandbox
    assert "<script" not in (await html.get_attribute("srcdoc") or "")
    await expect(page.frame_locator("iframe.message-html").locator("b")).to_have_text("Ada")
    await snapshot(page, "message")

    await page.get_by_role("link", name="Campaigns", exact=True).click()
    row = page.locator("tr[data-campaign]")
    await expect(row).to_contain_text("completed")
    await expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")

    await page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing hidden
    await page.get_by_role("link", name="Emails", exact=True).click()
    await expect(page.get_by_role("button", name="Log out")).to_be_in_viewport()
    await snapshot(page, "phone-emails")


async def test_campaign_buttons_pause_resume_retry_and_cancel(
    make_client: Start, context: Callable[..., Awaitable[Page]], store: Store, queue: RedisQueue
) -> None:
    client = await make_client()
    user = await store.ensure_user(DEV_EMAIL)
    headers = auth(await store.create_token(user.id, "test"))
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    payload = {"subject": "Launch {{ email }}", "body": "b", "start_at": later,
               "recipients": ["a@example.com", "b@example.com", "c@example.com"]}  # fmt: skip
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201
    campaign_id = (await response.json())["campaign"]["id"]
    # One email failed for good, as a worker records it: off the queue, with the reason.
    failed = await store.pool.fetchrow(
        """UPDATE dispatches SET status = 'failed', finished_at = now(),
                  last_error = '550 5.1.1 mailbox unavailable'
           WHERE id = (SELECT min(id) FROM dispatches) RETURNING id, sender_id, recipient"""
    )
    assert failed is not None
    assert await queue.remove(failed["sender_id"], [failed["id"]]) == 1
    page = await context(str(client.make_url("")))
    await _dev_login(page)
    await (
        page.get_by_role("navigation", name="Email lists").get_by_role("link", name="Sent").click()
    )
    failed_row = page.locator("#sent tbody tr")
    await expect(failed_row).to_contain_text(failed["recipient"])
    await expect(failed_row).to_contain_text("550 5.1.1 mailbox unavailable")

    await page.get_by_role("link", name="Campaigns", exact=True).click()
    await snapshot(page, "campaigns")
    await page.get_by_role("link", name="Launch a@example.com").click()
    await page.wait_for_url(f"**/campaigns/{campaign_id}")
    counts = page.get_by_role("list", name="Emails by status")
    await expect(counts.locator('[data-count="scheduled"]')).to_have_text("2")
    await expect(counts.locator('[data-count="failed"]')).to_have_text("1")

    await page.get_by_role("button", name="Pause").click()
    await expect(page.locator(".page-head .badge")).to_have_text("paused")
    await snapshot(page, "campaign")
    await page.get_by_role("button", name="Resume").click()
    await expect(page.locator(".page-head .badge")).to_have_text("running")

    await page.get_by_role("button", name="Retry failed").click()
    await expect(counts.locator('[data-count="failed"]')).to_have_text("0")
    await expect(counts.locator('[data-count="sent"]')).to_have_text("1")  # sent now, live

    # An error from the API is shown, and nothing changes.
    await page.evaluate("document.querySelector('meta[name=csrf-token]').content = 'forged'")
    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Cancel campaign").click()
    await expect(page.locator("[data-action-error]")).to_contain_text("security token")
    await expect(page.locator(".page-head .badge")).to_have_text("running")

    await page.reload()
    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Cancel campaign").click()
    await expect(page.locator(".page-head .badge")).to_have_text("cancelled")
    await expect(counts.locator('[data-count="cancelled"]')).to_have_text("2")
    await expect(page.get_by_role("button", name="Pause")).to_have_count(0)


async def test_the_dashboard_works_with_javascript_off(
    make_client: Start, context: Callable[..., Awaitable[Page]], store: Store
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    page = await context(str(client.make_url("")), java_script_enabled=False)
    await _dev_login(page)

    await page.get_by_role("link", name="Compose", exact=True).click()
    await page.get_by_label("Body").fill("Hi {{ name }}")
    await page.get_by_label("…or paste addresses").fill("email,name\nada@example.com,Ada\nbad")
    await page.get_by_role("button", name="Schedule").click()
    await expect(page.locator("#error-subject")).to_have_text("Subject is required")
    await expect(page.get_by_label("Body")).to_have_value("Hi {{ name }}")

    await page.get_by_label("Subject").fill("Plain {{ name }}")
    await page.get_by_label("Start").fill("2099-01-02T03:04:05")
    await page.get_by_role("button", name="Schedule").click()
    await page.wait_for_url("**/emails?scheduled=*")
    row = page.locator("#scheduled tbody tr")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("2099-01-02 03:04:05 UTC")  # no script: UTC, labelled

    await row.get_by_role("link").click()
    await page.get_by_role("button", name="Pause").click()
    await expect(page.locator(".page-head .badge")).to_have_text("paused")
    assert page.url.endswith(f"/campaigns/{await store.pool.fetchval('SELECT id FROM campaigns')}")
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_text("You are signed out.")).to_be_visible()
