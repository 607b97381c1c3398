"""The REST API under /api, one module per resource (JSON via orjson; errors as JSON from
`web/responses.py`). `routes` holds every route of them, for the app factory."""

from __future__ import annotations

from aiohttp import web

from . import (
    campaigns,
    compose,
    emails,
    inbox,
    me,
    replies,
    senders,
    sequences,
    stats,
    suppressions,
    tokens,
)

routes: list[web.AbstractRouteDef] = [
    route
    for module in (
        campaigns,
        emails,
        inbox,
        stats,
        me,
        senders,
        compose,
        tokens,
        suppressions,
        sequences,
        replies,
    )
    for route in module.routes
]
