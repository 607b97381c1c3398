"""Compose says every problem at once, in the form's words and units ("Delay must be 0 or
more seconds", not `delay_between_ms … -5000`), and warns of a start in the past and of a
limit above the sender's, with or without JavaScript."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html import unescape
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, expect

from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.browser import HANG_MS
from .support.helpers import auth
from .support.web_session import csrf_of, dev_login

API = frozenset({"api"})
VALID = {"subject": "Hi", "body": "b", "has_recipients": True}


async def _check(client: AppClient, csrf: str, **values: Any) -> Any:
    response = await client.post("/api/compose/check", json=values, headers={"X-CSRF-Token": csrf})
    assert response.status == 200, await response.text()
    return await response.json()


async def test_every_error_at_once_in_the_forms_units(make_client: Start, store: Store) -> None:
    client = await make_client(roles=API)
    csrf = await dev_login(client)
    other = await store.ensure_user("eve@example.com")
    theirs = await client.post(
        "/api/senders", headers=auth(await store.create_token(other.id, "t")),
        json={"from_address": "eve@example.com", "transport": "capture"},
    )  # fmt: skip
    found = await _check(
        client, csrf, name="two\nlines", subject="", body="", has_recipients=False,
        delay_seconds="-5", jitter_seconds="soon", hourly_limit="0", daily_limit="9" * 5000,
        start_at="tomorrow", sender=str((await theirs.json())["id"]),
    )  # fmt: skip
    assert found["errors"] == {
        "name": "Campaign name must be a single line",
        "subject": "Subject is required",
        "body": "Body is required",
        "recipients": "Add recipients: upload a file or paste addresses",
        "delay_seconds": "Delay must be 0 or more seconds",
        "jitter_seconds": "Random extra delay must be a number of seconds",
        "hourly_limit": "Hourly limit must be a whole number from 1 to 1,000,000,000",
        "daily_limit": "Daily limit must be a whole number from 1 to 1,000,000,000",
        "start_local": "Start is not a date and time",
        "sender": "Pick one of your senders",
    }
    assert (await _check(client, csrf, **VALID, delay_seconds="0.5")) == {
        "errors": {}, "warnings": {},
    }  # fmt: skip


async def test_a_past_start_and_a_limit_above_the_senders_are_warnings(
    make_client: Start,
) -> None:
    client = await make_client(roles=API)
    csrf = await dev_login(client)
    await client.get("/compose")  # makes the default sender
    found = await _check(
        client, csrf, **VALID, start_at="2020-01-01T00:00:00Z", hourly_limit="200000000"
    )
    assert found["errors"] == {}
    assert found["warnings"]["start_local"].startswith("This start is in the past")
    assert found["warnings"]["hourly_limit"].startswith("Above the sender's limit of")
    future = await _check(client, csrf, **VALID, start_at="2099-01-01T00:00:00Z")
    assert future["warnings"] == {}


def _shown(html: str, kind: str) -> dict[str, str]:
    """The messages a page shows: field → text, of `error` or `warning` boxes not hidden."""
    boxes = re.findall(rf'data-{kind}-for="(\w+)"( hidden)?[^>]*>([^<]*)<', html)
    return {name: unescape(text) for name, hidden, text in boxes if not hidden and text}


async def test_without_javascript_the_page_shows_every_error_and_its_warnings(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    await dev_login(client)
    page = await (await client.get("/compose")).text()
    form = {"csrf_token": csrf_of(page), "subject": "", "body": "b", "delay_seconds": "-5",
            "start_local": "2020-01-01T10:00:00", "tz_offset": "0",
            "recipients_csv": ""}  # fmt: skip
    response = await client.post("/compose", data=form)
    assert response.status == 422
    html = await response.text()
    assert _shown(html, "error") == {
        "subject": "Subject is required",
        "recipients": "Add recipients: upload a file or paste addresses",
        "delay_seconds": "Delay must be 0 or more seconds",
    }
    assert _shown(html, "warning")["start_local"].startswith("This start is in the past")
    assert await store.pool.fetchval("SELECT count(*) FROM campaigns") == 0


@pytest.fixture
async def page_context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(HANG_MS)
    yield context
    await context.close()


async def test_the_page_script_shows_them_all_before_any_schedule(
    make_client: Start, store: Store, page_context: BrowserContext
) -> None:
    client = await make_client(roles=API)
    page = await page_context.new_page()
    await page.goto(str(client.make_url("/")))
    await page.get_by_role("button", name="Continue as dev user").click()
    await page.wait_for_url("**/emails")
    await page.goto(str(client.make_url("/compose")))
    await page.get_by_label("Delay between emails").fill("-5")
    await page.get_by_label("Hourly limit").fill("5000000")
    await page.get_by_label("Start").fill("2020-01-01T10:00:00")
    await expect(page.locator("#warning-start_local")).to_contain_text("in the past")
    await expect(page.locator("#warning-hourly_limit")).to_contain_text("Above the sender's")
    await page.get_by_role("button", name="Schedule").click()
    await expect(page.locator("#error-delay_seconds")).to_have_text(
        "Delay must be 0 or more seconds"
    )
    await expect(page.locator("#error-subject")).to_have_text("Subject is required")
    await expect(page.locator("#error-body")).to_have_text("Body is required")
    await expect(page.locator('[data-error-for="recipients"]')).to_contain_text("Add recipients")
    assert await store.pool.fetchval("SELECT count(*) FROM campaigns") == 0
