"""The aiohttp application factory: one cleanup context per resource, roles chosen at start.

Roles: `api` (REST API + dashboard), `worker` (sends), `sweeper` (recovery). Cleanup
contexts exit in reverse order, so workers drain before the pools close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .campaigns import CampaignService
from .config import Settings, SettingsError
from .db import create_pool
from .metrics import Metrics
from .migrate import require_current_schema
from .pacing import Pacer, PacingPolicySpec
from .plugins import call_all, get_plugin_manager, registered
from .queue import RedisQueue
from .redis_client import connect_redis
from .resources import resource_dir
from .secretbox import secret_box
from .senders import SenderService
from .store import Store
from .sweeper import Sweeper
from .tasks import cancel_and_wait
from .transport import TransportRegistry, TransportSpec
from .web import api, dashboard, health, senders
from .web.guard import browser_middleware
from .web.keys import (
    CAMPAIGNS,
    METRICS,
    PACER,
    PLUGINS,
    POOL,
    QUEUE,
    REDIS,
    REDIS_PUBSUB,
    ROLES,
    SENDERS,
    SETTINGS,
    STORE,
    WORKERS,
)
from .web.middleware import auth_middleware, body_limit_middleware, error_middleware
from .worker import WorkerDeps, WorkerPool

log = logging.getLogger(__name__)
ALL_ROLES = frozenset({"api", "worker", "sweeper"})


async def _connections(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    assert settings.database_url and settings.redis_url
    pool_size = max(10, min(50, settings.worker_concurrency // 4))
    pool = await create_pool(settings.database_url, max_size=pool_size)
    clients = connect_redis(settings)
    redis = clients.data
    try:
        async with pool.acquire() as conn:
            await require_current_schema(conn)
        app[POOL] = pool
        app[REDIS] = redis
        app[REDIS_PUBSUB] = clients.pubsub
        app[STORE] = Store(pool)
        app[QUEUE] = RedisQueue(
            redis, shards=settings.queue_shards, lease_ms=settings.lease_seconds * 1000
        )
        app[CAMPAIGNS] = CampaignService(app[STORE], app[QUEUE], app[PLUGINS].hook, settings)
        app[PACER] = await _pacer(app)
        app[SENDERS] = SenderService(
            app[STORE],
            app[QUEUE],
            secret_box(settings),
            await _transport_specs(app),
            allow_private_targets=settings.private_targets_allowed,
        )
        await call_all(app[PLUGINS].hook.startup, settings=settings, app=app)
        yield
        await call_all(app[PLUGINS].hook.shutdown, settings=settings, app=app)
    finally:
        await clients.aclose()
        await pool.close()


async def _pacer(app: web.Application) -> Pacer:
    """The configured pacing policies (DISPATCH_PACING), from the plugins that offer them."""
    settings, hooks = app[SETTINGS], app[PLUGINS].hook
    policy_specs: dict[str, PacingPolicySpec] = {
        spec.name: spec
        for spec in await registered(hooks.register_pacing_policies, settings=settings)
    }
    unknown = [name for name in settings.pacing if name not in policy_specs]
    if unknown:
        known = ", ".join(sorted(policy_specs))
        raise SettingsError(f"DISPATCH_PACING names unknown policies {unknown}; known: {known}")
    return Pacer([(n, policy_specs[n].factory(app[REDIS], settings)) for n in settings.pacing])


async def _transport_specs(app: web.Application) -> list[TransportSpec]:
    return await registered(app[PLUGINS].hook.register_transports, settings=app[SETTINGS])


async def _plugin_web(app: web.Application) -> AsyncIterator[None]:
    """Plugins' routes and template changes (api role); the router is open until startup ends."""
    settings, hooks = app[SETTINGS], app[PLUGINS].hook
    for routes in await call_all(hooks.register_routes, settings=settings):
        app.router.add_routes(routes)
    env = aiohttp_jinja2.get_env(app)
    await call_all(hooks.prepare_jinja2_environment, env=env, settings=settings)
    yield


async def _workers(app: web.Application) -> AsyncIterator[None]:
    settings, hooks = app[SETTINGS], app[PLUGINS].hook
    transport_specs = await _transport_specs(app)
    pool = WorkerPool(
        WorkerDeps(
            settings=settings,
            store=app[STORE],
            queue=app[QUEUE],
            redis=app[REDIS],
            transports=TransportRegistry(
                transport_specs, settings, app[POOL], secret_box(settings)
            ),
            pacer=app[PACER],
            hooks=hooks,
            metrics=app[METRICS],
            pubsub_redis=app[REDIS_PUBSUB],
        )
    )
    app[WORKERS] = pool
    await pool.start()
    yield
    await pool.stop()


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    sweeper = Sweeper(
        app[STORE],
        app[QUEUE],
        app[REDIS],
        interval_s=max(1.0, settings.lease_seconds / 4),
        max_stalls=settings.max_attempts,
        metrics=app[METRICS],
    )
    task = asyncio.create_task(sweeper.run(), name="dispatch-sweeper")
    yield
    await cancel_and_wait(task)
    with contextlib.suppress(Exception):
        await sweeper.release()


def create_app(settings: Settings, roles: Iterable[str] = ALL_ROLES) -> web.Application:
    chosen = frozenset(roles)
    unknown = chosen - ALL_ROLES
    if unknown or not chosen:
        known = ", ".join(sorted(ALL_ROLES))
        raise ValueError(f"roles must be among {known}, got {sorted(chosen)}")
    # A process without the api role has no users: it answers health and metrics only.
    middlewares = [error_middleware, body_limit_middleware, browser_middleware, auth_middleware]
    app = web.Application(
        middlewares=middlewares if "api" in chosen else [error_middleware],
        client_max_size=max(settings.max_upload_bytes, settings.max_body_bytes),
    )
    app[SETTINGS] = settings
    app[ROLES] = chosen
    app[METRICS] = Metrics()
    app[PLUGINS] = get_plugin_manager(settings)
    app.cleanup_ctx.append(_connections)
    app.add_routes(health.routes)
    if "api" in chosen:
        aiohttp_jinja2.setup(
            app,
            loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
            autoescape=jinja2.select_autoescape(default=True),
        )
        app.add_routes(api.routes)
        app.add_routes(senders.routes)
        dashboard.setup(app)
        app.cleanup_ctx.append(_plugin_web)
    if "sweeper" in chosen:
        app.cleanup_ctx.append(_sweeper)
    if "worker" in chosen:
        app.cleanup_ctx.append(_workers)
    return app
