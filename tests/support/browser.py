"""Headless Debian Chromium driven by Playwright (async API, in the suite's event loop).

`make system-deps` installs /usr/bin/chromium; Playwright's own browser downloads are never used.
Set DISPATCH_SCREENSHOTS=docs/screenshots to save the pages the browser tests visit.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

CHROMIUM = Path(os.environ.get("DISPATCH_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = os.environ.get("DISPATCH_SCREENSHOTS")
HANG_MS = 30_000  # how long a wait may take before the test fails: a hang, never a timing
expect.set_options(timeout=HANG_MS)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 (a stat at start, once)
        reason = f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs it; its absence there is a broken setup
        pytest.skip(reason)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def snapshot(page: Page, name: str) -> None:
    """Save a whole-page PNG for the docs when DISPATCH_SCREENSHOTS names a folder."""
    if not SCREENSHOTS:
        return
    # A tall viewport rather than `full_page`: a sandboxed frame (another process) below the
    # fold is not painted into a full-page capture.
    size = page.viewport_size or {"width": 1280, "height": 860}
    height = await page.evaluate("document.documentElement.scrollHeight")
    await page.set_viewport_size({"width": size["width"], "height": max(height, size["height"])})
    try:
        await page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))  # makes the folder
    finally:
        await page.set_viewport_size(size)
