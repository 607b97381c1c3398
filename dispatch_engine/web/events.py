"""Live updates: `GET /api/events` (Server-Sent Events), fed from Redis pub/sub.

Workers in any process publish on `dispatch:events` after recording results; each API
process holds one subscription and fans events out to its open pages. An event reaches
only its owner's pages: events naming `owner_id` go to that user, events naming only
dispatch ids are resolved to their owners with one query per event (for the users
connected to this process), so nobody learns another user's ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis

from ..store import Store
from ..tasks import cancel_and_wait
from ..worker import EVENTS_CHANNEL
from .keys import EVENT_HUB, REDIS_PUBSUB, STORE
from .middleware import current_user

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
KEEPALIVE_S = 15.0
CLIENT_BUFFER = 64


async def publish(app: web.Application, event: dict[str, Any]) -> None:
    """Tell the owner's open pages, in every API process, that something changed."""
    try:
        await app[REDIS_PUBSUB].publish(EVENTS_CHANNEL, orjson.dumps(event))
    except Exception:  # live updates are a convenience; the change itself is committed
        log.warning("could not publish a %s event", event.get("type"), exc_info=True)


class EventHub:
    """One Redis subscription per process, fanned out to per-page queues by owner."""

    def __init__(self, redis: Redis, store: Store) -> None:
        self.redis = redis
        self.store = store
        self._clients: dict[int, set[asyncio.Queue[dict[str, Any] | None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()  # set while subscribed

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="dispatch-event-hub")

    async def stop(self) -> None:
        self.disconnect_all()
        if self._task is not None:
            await cancel_and_wait(self._task)

    def subscribe(self, owner_id: int) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(CLIENT_BUFFER)
        self._clients.setdefault(owner_id, set()).add(queue)
        return queue

    def unsubscribe(self, owner_id: int, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        queues = self._clients.get(owner_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._clients[owner_id]

    def disconnect_all(self) -> None:
        """End every open stream (the process is stopping; pages reconnect elsewhere)."""
        for queues in self._clients.values():
            for queue in queues:
                self._offer(queue, None)

    @staticmethod
    def _offer(queue: asyncio.Queue[dict[str, Any] | None], event: dict[str, Any] | None) -> None:
        if queue.full():  # a slow page: drop what it missed and tell it to reload its view
            while not queue.empty():
                queue.get_nowait()
            event = {"type": "resync"} if event is not None else None
        queue.put_nowait(event)

    def deliver(self, owner_id: int, event: dict[str, Any]) -> None:
        for queue in self._clients.get(owner_id, ()):
            self._offer(queue, event)

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(EVENTS_CHANNEL)
                    self.ready.set()
                    delay = 0.5
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self._route(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                self.ready.clear()
                log.warning("live events: Redis subscription lost; retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _route(self, raw: bytes) -> None:
        if not self._clients:
            return
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        kind = str(event.get("type", "change"))
        owner = event.get("owner_id")
        if isinstance(owner, int):
            public = {k: v for k, v in event.items() if k != "owner_id"}
            self.deliver(owner, {**public, "type": kind})
            return
        ids = [i for i in event.get("ids") or () if isinstance(i, int)]
        if not ids:
            return
        try:
            rows = await self.store.dispatch_owners(ids, list(self._clients))
        except Exception:
            log.warning("live events: could not resolve owners", exc_info=True)
            return
        by_owner: dict[int, dict[str, Any]] = {}
        for row in rows:
            out = by_owner.setdefault(row["owner_id"], {"type": kind, "ids": [], "campaigns": []})
            out["ids"].extend(row["ids"])
            out["campaigns"].append(row["campaign_id"])
        for owner_id, out in by_owner.items():
            self.deliver(owner_id, out)


async def events_context(app: web.Application) -> AsyncIterator[None]:
    hub = EventHub(app[REDIS_PUBSUB], app[STORE])
    app[EVENT_HUB] = hub
    hub.start()
    yield
    await hub.stop()


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end open streams so the server does not wait for them to time out."""
    hub = app.get(EVENT_HUB)
    if hub is not None:
        hub.disconnect_all()


def _frame(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


@routes.get("/api/events")
async def events(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    hub = request.app[EVENT_HUB]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # proxies must not buffer the stream
        }
    )
    await response.prepare(request)
    queue = hub.subscribe(user.id)
    try:
        # "hello" promises that what happens from now on reaches this page.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hub.ready.wait(), 5)
        await response.write(b"retry: 2000\nevent: hello\ndata: {}\n\n")
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if event is None:
                break
            await response.write(_frame(event))
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        hub.unsubscribe(user.id, queue)
    return response
