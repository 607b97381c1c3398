"""The typed facade over the plugin hooks: one method per hook of `hookspecs.py`.

Built once per process from its pluggy `PluginManager` (as tox's `Plugin` is). Callers say
what they want (`await hooks.transports()`, `await hooks.dispatch_sent(...)`) and never
touch pluggy. Two ways of calling, as the hook reference documents:

- registration and lifecycle hooks (`register_*`, `prepare_jinja2_environment`, `startup`,
  `shutdown`): an exception stops the caller, as a `PluginError` naming the plugin. What
  a `register_*` hook returns is collected on first use and cached: the first spec of each
  name wins (built-ins are `trylast`, so a plugin's spec of the same name replaces theirs).
- event hooks (`dispatch_sent`, …): a plugin that raises is logged and never stops the
  caller (nor the other plugins).

Implementations run in pluggy's order and may be coroutines; they are awaited (pluggy
itself is synchronous). `settings` is passed to every hook that takes it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .config import Settings

if TYPE_CHECKING:
    import click
    import jinja2
    from aiohttp import web

    from .auth import AuthProviderSpec
    from .pacing import PacingPolicySpec
    from .transport import TransportSpec

# Plugin failures keep the logger name operators already filter on.
log = logging.getLogger("dispatch_engine.plugins")
PROJECT = "dispatch_engine"


class PluginError(RuntimeError):
    """A plugin could not be loaded or broke a contract; the message names it."""


def _arguments(impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in impl.argnames}  # any subset, by name


async def call_impl(impl: pluggy.HookImpl, hook_name: str, kwargs: dict[str, Any]) -> Any:
    """One implementation, awaited when it is a coroutine; a PluginError names the plugin."""
    try:
        result = impl.function(**_arguments(impl, kwargs))
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        raise PluginError(
            f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
        ) from exc
    return result


async def call_each(caller: pluggy.HookCaller, kwargs: dict[str, Any]) -> list[Any]:
    """Every implementation in pluggy's order; the first exception stops the caller."""
    results = []
    for impl in reversed(caller.get_hookimpls()):
        result = await call_impl(impl, caller.name, kwargs)
        if result is not None:
            results.append(result)
    return results


async def collect_specs(caller: pluggy.HookCaller, kwargs: dict[str, Any]) -> list[Any]:
    """What a `register_*` hook returned, flattened, keeping the first spec of each name."""
    by_name: dict[str, Any] = {}
    for specs in await call_each(caller, kwargs):
        for spec in specs:
            by_name.setdefault(spec.name, spec)
    return list(by_name.values())


async def notify_each(caller: pluggy.HookCaller, kwargs: dict[str, Any]) -> None:
    """Fire an event hook; a plugin that raises is logged and never stops the caller."""
    for impl in reversed(caller.get_hookimpls()):
        try:
            result = impl.function(**_arguments(impl, kwargs))
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("plugin %s raised in %s", impl.plugin_name, caller.name)


class Hooks:
    """Every hook of a process's plugins, typed; registrations are collected once, cached."""

    def __init__(self, manager: pluggy.PluginManager, settings: Settings) -> None:
        self.manager = manager  # still open to `register` until the first call
        self.settings = settings
        self._registered: dict[str, list[Any]] = {}

    @classmethod
    def none(cls, settings: Settings | None = None) -> Hooks:
        """No plugin at all: every registration is empty and every event goes nowhere."""
        manager = pluggy.PluginManager(PROJECT)
        manager.add_hookspecs(hookspecs)
        return cls(manager, settings or Settings())

    def _caller(self, name: str) -> pluggy.HookCaller:
        caller: pluggy.HookCaller = getattr(self.manager.hook, name)
        return caller

    async def _specs(self, name: str) -> list[Any]:
        if name not in self._registered:
            self._registered[name] = await collect_specs(
                self._caller(name), {"settings": self.settings}
            )
        return list(self._registered[name])

    async def _call(self, name: str, **kwargs: Any) -> list[Any]:
        return await call_each(self._caller(name), {"settings": self.settings, **kwargs})

    async def _notify(self, name: str, **kwargs: Any) -> None:
        await notify_each(self._caller(name), {"settings": self.settings, **kwargs})

    def _listened(self, name: str) -> bool:
        return bool(self._caller(name).get_hookimpls())

    # ---- registration: collected on first use, then cached ----

    async def transports(self) -> list[TransportSpec]:
        """`register_transports`: the transports offered, one per name."""
        return await self._specs("register_transports")

    async def pacing_policies(self) -> list[PacingPolicySpec]:
        """`register_pacing_policies`: the pacing policies offered, one per name."""
        return await self._specs("register_pacing_policies")

    async def auth_providers(self) -> list[AuthProviderSpec]:
        """`register_auth_providers`: the dashboard's login providers, one per name."""
        return await self._specs("register_auth_providers")

    async def routes(self) -> list[web.AbstractRouteDef]:
        """`register_routes`: every plugin's routes, in pluggy's order."""
        if "register_routes" not in self._registered:
            found: Iterable[Iterable[web.AbstractRouteDef]] = await self._call("register_routes")
            self._registered["register_routes"] = [r for routes in found for r in routes]
        return list(self._registered["register_routes"])

    async def add_commands(self, cli: click.Group) -> None:
        """`register_commands`: plugins add their commands to the CLI group."""
        await call_each(self._caller("register_commands"), {"cli": cli})

    async def prepare_jinja2_environment(self, env: jinja2.Environment) -> None:
        await self._call("prepare_jinja2_environment", env=env)

    # ---- lifecycle ----

    async def startup(self, app: web.Application) -> None:
        await self._call("startup", app=app)

    async def shutdown(self, app: web.Application) -> None:
        await self._call("shutdown", app=app)

    # ---- events: logged when a plugin raises, never raised ----

    @property
    def has_dispatch_sent(self) -> bool:
        """A plugin listens to `dispatch_sent` (callers skip the loop over results if not)."""
        return self._listened("dispatch_sent")

    @property
    def has_dispatch_failed(self) -> bool:
        """A plugin listens to `dispatch_failed`."""
        return self._listened("dispatch_failed")

    async def dispatch_sent(
        self, *, dispatch_id: int, campaign_id: int, recipient: str, message_id: str
    ) -> None:
        await self._notify(
            "dispatch_sent",
            dispatch_id=dispatch_id,
            campaign_id=campaign_id,
            recipient=recipient,
            message_id=message_id,
        )

    async def dispatch_failed(
        self, *, dispatch_id: int, campaign_id: int, recipient: str, error: str
    ) -> None:
        await self._notify(
            "dispatch_failed",
            dispatch_id=dispatch_id,
            campaign_id=campaign_id,
            recipient=recipient,
            error=error,
        )

    async def sender_limited(self, *, sender_id: int, resume_at_ms: int, reason: str) -> None:
        await self._notify(
            "sender_limited", sender_id=sender_id, resume_at_ms=resume_at_ms, reason=reason
        )

    async def sender_parked(self, *, sender_id: int, reason: str) -> None:
        await self._notify("sender_parked", sender_id=sender_id, reason=reason)

    async def campaign_completed(self, *, campaign_id: int, owner_id: int) -> None:
        await self._notify("campaign_completed", campaign_id=campaign_id, owner_id=owner_id)

    async def dispatch_bounced(
        self, *, dispatch_id: int, campaign_id: int, recipient: str, kind: str, detail: str
    ) -> None:
        await self._notify(
            "dispatch_bounced",
            dispatch_id=dispatch_id,
            campaign_id=campaign_id,
            recipient=recipient,
            kind=kind,
            detail=detail,
        )

    async def dispatch_complained(
        self, *, dispatch_id: int, campaign_id: int, recipient: str, detail: str
    ) -> None:
        await self._notify(
            "dispatch_complained",
            dispatch_id=dispatch_id,
            campaign_id=campaign_id,
            recipient=recipient,
            detail=detail,
        )

    async def campaign_paused(self, *, campaign_id: int, owner_id: int, reason: str) -> None:
        await self._notify(
            "campaign_paused", campaign_id=campaign_id, owner_id=owner_id, reason=reason
        )

    # ---- replies (docs/replies.md) ----

    async def reply_received(
        self, *, dispatch_id: int, campaign_id: int, recipient: str, from_address: str,
        snippet: str,
    ) -> None:  # fmt: skip
        await self._notify(
            "reply_received",
            dispatch_id=dispatch_id,
            campaign_id=campaign_id,
            recipient=recipient,
            from_address=from_address,
            snippet=snippet,
        )
