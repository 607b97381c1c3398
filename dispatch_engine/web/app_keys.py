"""Every object the aiohttp app shares, under a typed `web.AppKey`.

The live-events hub's key lives beside its class (`web/events.EVENT_HUB`): naming its type
here made this module and web/events.py import each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
import asyncpg
import pluggy
from aiohttp import web
from redis.asyncio import Redis

from ..campaigns import CampaignService
from ..config import Settings
from ..consent.feedback import Feedback
from ..events import Subscription
from ..hooks import Hooks
from ..metrics import Metrics
from ..pacing import Pacer
from ..queue import RedisQueue
from ..senders import SenderService
from ..store import Store
from ..worker import WorkerPool

if TYPE_CHECKING:
    from ..auth import AuthProviderSpec
    from .sessions import SessionManager

SETTINGS = web.AppKey("settings", Settings)
ROLES: web.AppKey[frozenset[str]] = web.AppKey("roles")
PLUGINS = web.AppKey("plugins", pluggy.PluginManager)
HOOKS = web.AppKey("hooks", Hooks)  # the typed calls of PLUGINS' hooks
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)
REDIS_PUBSUB = web.AppKey("redis_pubsub", Redis)  # the same client unless clustered
SUBSCRIPTION = web.AppKey("subscription", Subscription)  # the process's one, on REDIS_PUBSUB
STORE = web.AppKey("store", Store)
QUEUE = web.AppKey("queue", RedisQueue)
CAMPAIGNS = web.AppKey("campaigns", CampaignService)
WORKERS = web.AppKey("workers", WorkerPool)
PACER = web.AppKey("pacer", Pacer)
METRICS = web.AppKey("metrics", Metrics)
SENDERS = web.AppKey("senders", SenderService)
FEEDBACK = web.AppKey("feedback", Feedback)  # the one handler of bounces, complaints, unsubscribes
# The dashboard's (api role): sessions, login providers by name, their HTTP client.
SESSIONS: web.AppKey[SessionManager] = web.AppKey("sessions")
AUTH_PROVIDERS: web.AppKey[dict[str, AuthProviderSpec]] = web.AppKey("auth_providers")
HTTP_CLIENT = web.AppKey("http_client", aiohttp.ClientSession)
