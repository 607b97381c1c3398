"""The dashboard (api role): login, pages, compose, API tokens, live events, static files.

`setup(app)` wires it into the app factory; each part lives in its own module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from . import auth, compose, email_pages, events, pages, suppression_pages, token_pages, unsubscribe
from .app_keys import SESSIONS, SETTINGS, STORE
from .sessions import SessionManager
from .templating import setup_templates, static_dir


async def _sessions(app: web.Application) -> AsyncIterator[None]:
    app[SESSIONS] = SessionManager(app[SETTINGS], app[STORE])
    yield


def setup(app: web.Application) -> None:
    """Add the dashboard to `app` (after the connections' cleanup context)."""
    setup_templates(app)
    app.cleanup_ctx.extend([_sessions, auth.providers_context, events.events_context])
    app.on_shutdown.append(events.close_streams)
    app.add_routes(auth.routes)
    app.add_routes(compose.routes)
    app.add_routes(events.routes)
    app.add_routes(email_pages.routes)
    app.add_routes(pages.routes)
    app.add_routes(token_pages.routes)
    unsubscribe.setup(app)  # the recipients' one-click pages (no login)
    app.add_routes(suppression_pages.routes)
    app.router.add_static("/static", static_dir())
