"""Connect to Redis or Valkey: one server, or a cluster (`DISPATCH_REDIS_CLUSTER=true`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis, RedisCluster

from .config import Settings


@dataclass(frozen=True)
class RedisClients:
    data: Redis  # keys and scripts (a RedisCluster when clustered; same command surface)
    pubsub: Redis  # wake-ups and live events

    async def aclose(self) -> None:
        await self.data.aclose()
        if self.pubsub is not self.data:
            await self.pubsub.aclose()


def connect_redis(settings: Settings) -> RedisClients:
    assert settings.redis_url
    if not settings.redis_cluster:
        client = Redis.from_url(settings.redis_url)
        return RedisClients(client, client)
    # In a cluster PUBLISH reaches every node, so any one node serves the subscriptions.
    cluster = RedisCluster.from_url(settings.redis_url)
    return RedisClients(cast(Redis, cluster), Redis.from_url(settings.redis_url))
