"""Liveness and readiness: /healthz says the process runs, /readyz that its servers answer."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from .app_keys import METRICS, POOL, QUEUE, REDIS, ROLES
from .responses import json_response

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    roles: frozenset[str] = request.app[ROLES]
    return json_response({"status": "ok", "roles": sorted(roles)})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            await request.app[POOL].fetchval("SELECT 1")
        checks["postgresql"] = "ok"
    except Exception as exc:
        checks["postgresql"] = f"error: {type(exc).__name__}"
    try:
        async with asyncio.timeout(2):
            await request.app[REDIS].ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return json_response(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of this process; queue depths are read from Redis now."""
    registry = request.app[METRICS]
    with contextlib.suppress(Exception):  # a scrape must not fail because Redis is away
        registry.queue_depth.clear()
        for sender, depth in await request.app[QUEUE].deepest_senders():
            registry.queue_depth.labels(str(sender)).set(depth)
    return registry.response()
