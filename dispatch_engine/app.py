"""The aiohttp application factory: one cleanup context per resource, roles chosen at start.

Roles: `api` (REST API + dashboard), `worker` (sends), `sweeper` (recovery). Cleanup
contexts exit in reverse order, so workers drain before the pools close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from functools import partial

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .campaigns import CampaignService
from .config import Settings, SettingsError
from .consent.feedback import Feedback
from .consent.policy import FeedbackPolicy
from .consent.settings import ConsentSettings
from .db import create_pool
from .events import Subscription, publish
from .hooks import Hooks
from .metrics import Metrics
from .migrate import require_current_schema
from .pacing import Pacer, PacingPolicySpec
from .plugins import get_plugin_manager
from .pools.rotation import Rotation
from .queue import RedisQueue
from .redis_client import connect_redis
from .secretbox import secret_box
from .senders import SenderService
from .sequences.sequencer import Sequencer
from .setting import settings_of
from .store import Store
from .sweeper import Sweeper
from .tasks import cancel_and_wait
from .transport import TransportRegistry
from .web import api, dashboard, health
from .web.app_keys import (
    CAMPAIGNS,
    FEEDBACK,
    HOOKS,
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
    SUBSCRIPTION,
    WORKERS,
)
from .web.guard import browser_middleware
from .web.middleware import auth_middleware, body_limit_middleware
from .web.responses import error_middleware
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
        app[SUBSCRIPTION] = Subscription(clients.pubsub)
        app[STORE] = Store(pool)
        app[QUEUE] = RedisQueue(
            redis, shards=settings.queue_shards, lease_ms=settings.lease_seconds * 1000
        )
        app[CAMPAIGNS] = CampaignService(app[STORE], app[QUEUE], app[HOOKS], settings)
        app[PACER] = await _pacer(app)
        consent = settings_of(ConsentSettings, settings)
        policy = FeedbackPolicy(  # hooks and auto-pause after each new report
            app[STORE], app[CAMPAIGNS], app[HOOKS], consent, partial(publish, clients.pubsub)
        )
        app[FEEDBACK] = Feedback(app[STORE], consent, policy)
        app[SENDERS] = SenderService(
            app[STORE],
            app[QUEUE],
            secret_box(settings),
            await app[HOOKS].transports(),
            allow_private_targets=settings.private_targets_allowed,
        )
        await app[HOOKS].startup(app)
        yield
        await app[HOOKS].shutdown(app)
    finally:
        await clients.aclose()
        await pool.close()


async def _pacer(app: web.Application) -> Pacer:
    """The configured pacing policies (DISPATCH_PACING), from the plugins that offer them."""
    settings = app[SETTINGS]
    policy_specs: dict[str, PacingPolicySpec] = {
        spec.name: spec for spec in await app[HOOKS].pacing_policies()
    }
    unknown = [name for name in settings.pacing if name not in policy_specs]
    if unknown:
        known = ", ".join(sorted(policy_specs))
        raise SettingsError(f"DISPATCH_PACING names unknown policies {unknown}; known: {known}")
    return Pacer([(n, policy_specs[n].factory(app[REDIS], settings)) for n in settings.pacing])


async def _plugin_web(app: web.Application) -> AsyncIterator[None]:
    """Plugins' routes and template changes (api role); the router is open until startup ends."""
    hooks = app[HOOKS]
    app.router.add_routes(await hooks.routes())
    await hooks.prepare_jinja2_environment(aiohttp_jinja2.get_env(app))
    yield


async def _workers(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    transport_specs = await app[HOOKS].transports()
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
            hooks=app[HOOKS],
            metrics=app[METRICS],
            pubsub_redis=app[REDIS_PUBSUB],
            subscription=app[SUBSCRIPTION],
            feedback=app[FEEDBACK],  # refusals at RCPT or DATA go through the one handler
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
        rotation=Rotation(app[STORE], app[QUEUE], settings),
    )
    task = asyncio.create_task(sweeper.run(), name="dispatch-sweeper")
    # Follow-ups of sequences, made by the sweeper's leader only (sequences/sequencer.py).
    sequencer = Sequencer(
        app[STORE], app[QUEUE], day_seconds=settings.day_seconds, is_leader=lambda: sweeper.leader
    )
    steps = asyncio.create_task(sequencer.run(), name="dispatch-sequencer")
    yield
    await cancel_and_wait(task, steps)
    with contextlib.suppress(Exception):
        await sweeper.release()


async def _subscribed(app: web.Application) -> AsyncIterator[None]:
    """The process's pub/sub subscription, once every role has added its listeners."""
    subscription = app[SUBSCRIPTION]
    subscription.start()
    yield
    await subscription.stop()


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
    app[HOOKS] = Hooks(app[PLUGINS], settings)
    app.cleanup_ctx.append(_connections)
    app.add_routes(health.routes)
    if "api" in chosen:
        aiohttp_jinja2.setup(
            app,
            loader=jinja2.PackageLoader("dispatch_engine"),  # dispatch_engine/templates/
            autoescape=jinja2.select_autoescape(default=True),
        )
        app.add_routes(api.routes)
        dashboard.setup(app)
        app.cleanup_ctx.append(_plugin_web)
    if "sweeper" in chosen:
        app.cleanup_ctx.append(_sweeper)
    if "worker" in chosen:
        app.cleanup_ctx.append(_workers)
    app.cleanup_ctx.append(_subscribed)  # last: listeners were added by the contexts above
    return app
