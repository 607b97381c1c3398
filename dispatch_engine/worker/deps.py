"""What a worker pool is built from: the process's connections, settings and plugins."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from ..config import Settings
from ..consent.feedback import Feedback
from ..events import Subscription
from ..hooks import Hooks
from ..metrics import Metrics
from ..pacing import Pacer
from ..queue import RedisQueue
from ..store import Store
from ..transport import TransportRegistry


@dataclass(frozen=True)
class WorkerDeps:
    settings: Settings
    store: Store
    queue: RedisQueue
    redis: Redis
    transports: TransportRegistry
    pacer: Pacer
    hooks: Hooks
    metrics: Metrics = field(default_factory=Metrics)
    pubsub_redis: Redis | None = None  # a connection of its own for pub/sub, when given
    subscription: Subscription | None = None  # the process's one (its owner starts it)
    feedback: Feedback | None = None  # the app's handler; None: one without hooks or pauses

    @property
    def pubsub(self) -> Redis:
        return self.pubsub_redis or self.redis
