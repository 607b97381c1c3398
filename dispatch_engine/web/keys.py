"""Every object the aiohttp app shares, under a typed `web.AppKey`."""

from __future__ import annotations

import asyncpg
import pluggy
from aiohttp import web
from redis.asyncio import Redis

from ..campaigns import CampaignService
from ..config import Settings
from ..queue import RedisQueue
from ..store import Store
from ..worker import WorkerPool

SETTINGS = web.AppKey("settings", Settings)
ROLES: web.AppKey[frozenset[str]] = web.AppKey("roles")
PLUGINS = web.AppKey("plugins", pluggy.PluginManager)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)
STORE = web.AppKey("store", Store)
QUEUE = web.AppKey("queue", RedisQueue)
CAMPAIGNS = web.AppKey("campaigns", CampaignService)
WORKERS = web.AppKey("workers", WorkerPool)
