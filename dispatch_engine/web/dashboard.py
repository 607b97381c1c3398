"""The dashboard's pages (server-rendered Jinja). The full dashboard is its own issue."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from .keys import SETTINGS

routes = web.RouteTableDef()


@routes.get("/")
@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, Any]:
    return {"base_url": request.app[SETTINGS].public_url}
