"""Connect to Redis or Valkey: one server, or a cluster (`DISPATCH_REDIS_CLUSTER=true`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

from .config import Settings


@dataclass(frozen=True)
class RedisClients:
    data: Redis  # keys and scripts (a RedisCluster when clustered; same command surface)
    pubsub: Redis  # wake-ups and live events

    async def aclose(self) -> None:
        await self.data.aclose()
        if self.pubsub is not self.data:
            await self.pubsub.aclose()


# redis-py's default pool raises "Too many connections" past its cap (100 since 6.0); a burst
# of concurrent commands (sends, pages, pacing) should wait for a connection instead.
MAX_CONNECTIONS = 100
CONNECTION_WAIT_S = 20.0


def _client(url: str) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=CONNECTION_WAIT_S
    )
    return Redis.from_pool(pool)


def connect_redis(settings: Settings) -> RedisClients:
    assert settings.redis_url
    if not settings.redis_cluster:
        client = _client(settings.redis_url)
        return RedisClients(client, client)
    # In a cluster PUBLISH reaches every node, so any one node serves the subscriptions.
    cluster = RedisCluster.from_url(settings.redis_url)
    return RedisClients(cast(Redis, cluster), _client(settings.redis_url))
