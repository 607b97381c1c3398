"""The process's one pub/sub subscription (`events.Subscription`) against a real Redis.

Several channels share one connection; each listener hears only its channel and is told
when it is subscribed again after a drop (what was published meanwhile is lost, so the
waker claims and live pages may resync); a listener that raises stops nobody.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from redis.asyncio import Redis

from dispatch_engine.events import EVENTS_CHANNEL, WAKE_CHANNEL, Subscription, publish

from .support.helpers import wait_for


def test_the_channel_names_stay_what_running_processes_use() -> None:
    assert (EVENTS_CHANNEL, WAKE_CHANNEL) == ("dispatch:events", "dispatch:wake")


async def _subscribers(redis: Redis) -> int:
    return int(dict(await redis.pubsub_numsub(EVENTS_CHANNEL))[EVENTS_CHANNEL.encode()])


async def test_one_connection_serves_every_channel_and_comes_back_after_a_drop(
    redis: Redis,
) -> None:
    events: list[bytes] = []
    wakes: list[bytes] = []
    subscribed: list[str] = []

    async def on_event(raw: bytes) -> None:
        await asyncio.sleep(0)
        events.append(raw)

    subscription = Subscription(redis)
    subscription.listen(EVENTS_CHANNEL, on_event, on_subscribed=lambda: subscribed.append("e"))
    subscription.listen(WAKE_CHANNEL, wakes.append, on_subscribed=lambda: subscribed.append("w"))
    subscription.start()
    try:
        await asyncio.wait_for(subscription.ready.wait(), 10)
        assert sorted(subscribed) == ["e", "w"]
        clients = await redis.client_list(_type="pubsub")
        assert len(clients) == 1  # both channels on one connection
        await redis.publish(WAKE_CHANNEL, b"123")
        await redis.publish(EVENTS_CHANNEL, b'{"type":"x"}')
        await wait_for(lambda: _heard(events, wakes, 1))
        assert (events, wakes) == ([b'{"type":"x"}'], [b"123"])

        await redis.client_kill_filter(_type="pubsub")  # the connection drops
        await wait_for(lambda: _resubscribed(subscribed))
        await asyncio.wait_for(subscription.ready.wait(), 10)
        await redis.publish(EVENTS_CHANNEL, b"after")
        await wait_for(lambda: _heard(events, wakes, 2, wakes_too=False))
        assert events[-1] == b"after"
    finally:
        await subscription.stop()
    assert not subscription.ready.is_set()
    assert await _subscribers(redis) == 0


async def _heard(events: list[bytes], wakes: list[bytes], n: int, wakes_too: bool = True) -> bool:
    return len(events) >= n and (not wakes_too or len(wakes) >= n)


async def _resubscribed(subscribed: list[str]) -> bool:
    return sorted(subscribed) == ["e", "e", "w", "w"]


async def test_a_listener_that_raises_is_logged_and_the_subscription_goes_on(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[bytes] = []

    def fragile(raw: bytes) -> None:
        if raw == b"bad":
            raise ValueError("cannot parse")
        heard.append(raw)

    subscription = Subscription(redis)
    subscription.listen(EVENTS_CHANNEL, fragile)
    subscription.start()
    try:
        await asyncio.wait_for(subscription.ready.wait(), 10)
        with caplog.at_level(logging.ERROR, logger="dispatch_engine.events"):
            await redis.publish(EVENTS_CHANNEL, b"bad")
            await redis.publish(EVENTS_CHANNEL, b"good")
            await wait_for(lambda: _heard(heard, [], 1, wakes_too=False))
        assert heard == [b"good"]
        assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["cannot parse"]
        assert len(await redis.client_list(_type="pubsub")) == 1  # not reconnected
    finally:
        await subscription.stop()


async def test_without_listeners_it_opens_no_connection(redis: Redis) -> None:
    subscription = Subscription(redis)
    subscription.start()
    await asyncio.sleep(0.1)
    assert await redis.client_list(_type="pubsub") == []
    await subscription.stop()


async def test_listeners_are_added_before_the_start(redis: Redis) -> None:
    subscription = Subscription(redis)
    subscription.listen(EVENTS_CHANNEL, lambda raw: None)
    with pytest.raises(ValueError, match="already has a listener"):
        subscription.listen(EVENTS_CHANNEL, lambda raw: None)
    subscription.start()
    try:
        with pytest.raises(RuntimeError, match="before the subscription starts"):
            subscription.listen(WAKE_CHANNEL, lambda raw: None)
    finally:
        await subscription.stop()


async def test_publish_sends_json_and_never_raises(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(EVENTS_CHANNEL)
        await publish(redis, {"type": "campaign", "id": 3})
        message = None
        while message is None or message["type"] != "message":
            message = await pubsub.get_message(timeout=5)
        assert orjson.loads(message["data"]) == {"type": "campaign", "id": 3}
    unreachable = Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    with caplog.at_level(logging.WARNING, logger="dispatch_engine.events"):
        await publish(unreachable, {"type": "campaign"})
    await unreachable.aclose()
    assert "could not publish a campaign event" in caplog.text
