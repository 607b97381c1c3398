"""What a request's path and query say, parsed strictly (a 422 naming the parameter)."""

from __future__ import annotations

from aiohttp import web

from ..parsing import row_id


def path_id(request: web.Request, name: str = "id") -> int:
    """The row id in the path (`/api/campaigns/{id}`): 1 .. 2^63-1."""
    return row_id(request.match_info[name], name)


def query_flag(request: web.Request, name: str) -> bool:
    """A yes/no query parameter (`?cancel_queued=true`); absent is no."""
    return request.query.get(name, "false").lower() in ("1", "true", "yes")
