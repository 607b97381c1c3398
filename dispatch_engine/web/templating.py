"""Templating the dashboard: rendering a page (or its live region), the context every page
shares, the filters, static file URLs."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from markupsafe import Markup

from .app_keys import AUTH_PROVIDERS, SETTINGS
from .middleware import USER
from .sessions import CSRF_TOKEN

STATIC_VERSION = web.AppKey("static_version", str)
PARTIAL_HEADER = "X-Partial"  # the page's JS asks for its live region only


def static_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "templates" / "static"


def _static_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(static_dir().rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def when(value: datetime | None) -> Markup:
    """A UTC time in a <time> element; the page's script shows it in the reader's zone."""
    if value is None:
        return Markup('<span class="muted">—</span>')
    at = value.astimezone(UTC)
    iso = at.isoformat(timespec="seconds").replace("+00:00", "Z")
    return Markup('<time datetime="{}" data-local>{}</time>').format(
        iso, at.strftime("%Y-%m-%d %H:%M:%S UTC")
    )


def when_ms(value: int | None) -> Markup:
    return when(datetime.fromtimestamp(value / 1000, UTC) if value else None)


def iso_when(value: str | None) -> Markup:
    """`when` of an API time string (…Z)."""
    return when(datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None)


def setup_templates(app: web.Application) -> None:
    env = aiohttp_jinja2.get_env(app)
    env.filters["when"] = when
    env.filters["when_ms"] = when_ms
    env.filters["iso_when"] = iso_when
    env.filters["number"] = lambda n: f"{n:,}" if isinstance(n, int) else n
    app[STATIC_VERSION] = _static_version()


def wants_partial(request: web.Request) -> bool:
    return request.headers.get(PARTIAL_HEADER) == "live"


def page_context(request: web.Request) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    version = request.app[STATIC_VERSION]
    return {
        "user": request.get(USER),
        "csrf_token": request.get(CSRF_TOKEN, ""),
        "path": request.path,
        "local_mode": settings.dev_login_enabled,
        "providers": list(request.app.get(AUTH_PROVIDERS, {}).values()),
        "static": lambda name: f"/static/{name}?v={version}",
    }


def render(
    request: web.Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
    partial: str | None = None,
) -> web.Response:
    """Render a page, or only its live region (`partial`) when its script asks for it."""
    name = partial if partial and wants_partial(request) else template
    response = aiohttp_jinja2.render_template(
        name, request, {**page_context(request), **(context or {})}, status=status
    )
    response.headers["Cache-Control"] = "no-store"
    return response
