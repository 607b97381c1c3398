"""Helpers for tests that act as a browser over HTTP: CSRF tokens from pages, the dev login."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import ClientResponse

from .app_client import AppClient

_META = re.compile(r'<meta name="csrf-token" content="([0-9a-f]*)">')
_FIELD = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token a page hands its forms and scripts."""
    found = _META.search(html) or _FIELD.search(html)
    assert found and found.group(1), "the page carries no CSRF token"
    return found.group(1)


async def dev_login(client: AppClient) -> str:
    """Sign in as the dev user like a browser would; returns the session's CSRF token."""
    login = await client.get("/login")
    assert login.status == 200
    response = await client.post(
        "/auth/dev/start", data={"csrf_token": csrf_of(await login.text()), "next": "/emails"}
    )
    assert response.status == 200 and response.url.path == "/emails", response.url
    return csrf_of(await response.text())


async def next_event(response: ClientResponse) -> tuple[str, dict[str, Any]]:
    """The next Server-Sent Event of a streaming response: (event name, JSON data)."""
    event, data = "message", ""
    while True:
        raw = await response.content.readline()
        if not raw:
            raise EOFError("the event stream ended")
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                return event, orjson.loads(data)
            event, data = "message", ""
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data += value
