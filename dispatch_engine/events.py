"""Redis pub/sub between processes: the channels, `publish`, and one reconnecting subscription.

Two channels, both fire-and-forget (the truth is in PostgreSQL):
- `EVENTS_CHANNEL`: something changed (a campaign, some dispatches); each API process
  fans it out to its owners' open pages (`web/events.py`).
- `WAKE_CHANNEL`: work fell due earlier than a worker's timer (published by the queue's
  scripts with the new due time); every worker process re-arms its claim timer.

A process keeps ONE `Subscription` (one Redis connection) for every channel it listens to;
it reconnects with backoff, and tells each listener when it is subscribed again, because a
message published while it was away is lost.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "dispatch:events"  # live updates for dashboards, from any process
WAKE_CHANNEL = "dispatch:wake"  # a due time (unix ms, Redis' clock) earlier than planned

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0

MessageHandler = Callable[[bytes], Awaitable[None] | None]


async def publish(redis: Redis, event: dict[str, Any]) -> None:
    """Tell every API process's open pages that something changed; never raises."""
    try:
        await redis.publish(EVENTS_CHANNEL, orjson.dumps(event))
    except Exception:  # live updates are a convenience; the change itself is committed
        log.warning("could not publish a %s event", event.get("type"), exc_info=True)


@dataclass(frozen=True)
class _Listener:
    on_message: MessageHandler
    on_subscribed: Callable[[], None] | None  # after each (re)subscription


class Subscription:
    """One pub/sub connection for a process's channels, reconnecting when it drops.

    Add listeners with `listen` before `start`. A message is handed to its channel's
    handler, in order and awaited: keep handlers quick. A handler that raises is logged;
    the subscription goes on. `ready` is set while every channel is subscribed.
    """

    def __init__(self, redis: Redis, *, name: str = "dispatch-subscription") -> None:
        self.redis = redis
        self.name = name
        self.ready = asyncio.Event()
        self._listeners: dict[bytes, _Listener] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def channels(self) -> list[str]:
        return [channel.decode() for channel in self._listeners]

    def listen(
        self,
        channel: str,
        on_message: MessageHandler,
        *,
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        """Hand `channel`'s messages to `on_message`; `on_subscribed` runs at each subscribe."""
        if self._task is not None:
            raise RuntimeError("add listeners before the subscription starts")
        key = channel.encode()
        if key in self._listeners:
            raise ValueError(f"{channel} already has a listener")
        self._listeners[key] = _Listener(on_message, on_subscribed)

    def start(self) -> None:
        """Subscribe in a task (nothing to do, and no connection, without listeners)."""
        if self._listeners and self._task is None:
            self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        self.ready.clear()

    async def run(self) -> None:
        """Stay subscribed until cancelled."""
        delay = RETRY_FIRST_S
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(*self._listeners)
                    pending = set(self._listeners)
                    async for message in pubsub.listen():
                        if await self._handle(message, pending):
                            delay = RETRY_FIRST_S  # subscribed again: back off from scratch
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("pub/sub %s: connection lost; retrying", self.channels, exc_info=True)
            self.ready.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _handle(self, message: dict[str, Any], pending: set[bytes]) -> bool:
        """Deliver one message; True when it completed the subscription to every channel."""
        listener = self._listeners.get(_as_bytes(message.get("channel")))
        if listener is None:
            return False
        kind = message.get("type")
        if kind == "subscribe":
            pending.discard(_as_bytes(message["channel"]))
            if listener.on_subscribed is not None:
                listener.on_subscribed()
            if pending:
                return False
            self.ready.set()
            return True
        if kind == "message":
            try:
                result = listener.on_message(_as_bytes(message["data"]))
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("pub/sub %s: a listener failed", message["channel"])
        return False


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()
