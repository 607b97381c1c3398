"""The typed hook facade (`dispatch_engine.hooks.Hooks`) over a real pluggy PluginManager.

Small real plugins (classes with `hookimpl` methods) are registered into a manager that
has the real hookspecs: the order implementations run in, which spec of a name wins,
how a failing plugin is named, that an event hook's failure stops nobody, that
registrations are collected once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import click
import pluggy
import pytest
from aiohttp import web

from dispatch_engine import hookimpl, hookspecs
from dispatch_engine.config import Settings
from dispatch_engine.hooks import Hooks, PluginError
from dispatch_engine.transport import TransportSpec

SETTINGS = Settings()


def _factory(context: Any) -> Any:
    raise AssertionError("never made in these tests")


def spec(name: str, description: str = "") -> TransportSpec:
    return TransportSpec(name, _factory, description)


def manager(*plugins: tuple[str, object]) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("dispatch_engine")
    pm.add_hookspecs(hookspecs)
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    pm.check_pending()
    return pm


class Heard:
    """Records every event it hears, with its arguments; `name` tells plugins apart."""

    def __init__(self, name: str, log: list[tuple[str, str, dict[str, Any]]]) -> None:
        self.name = name
        self.log = log

    @hookimpl
    def dispatch_sent(self, dispatch_id: int, message_id: str, settings: Settings) -> None:
        self.log.append((self.name, "dispatch_sent", {"id": dispatch_id, "mid": message_id}))
        assert settings is SETTINGS

    @hookimpl
    async def sender_parked(self, sender_id: int, reason: str) -> None:
        await asyncio.sleep(0)  # a coroutine: awaited before the next plugin runs
        self.log.append((self.name, "sender_parked", {"sender": sender_id, "reason": reason}))

    @hookimpl
    def campaign_completed(self, campaign_id: int, owner_id: int) -> None:
        self.log.append((self.name, "campaign_completed", {"c": campaign_id, "o": owner_id}))


class Raises:
    @hookimpl
    def dispatch_sent(self, dispatch_id: int) -> None:
        raise RuntimeError(f"boom on {dispatch_id}")

    @hookimpl
    async def campaign_completed(self) -> None:
        raise ValueError("async boom")


async def test_event_hooks_run_in_pluggys_order_and_await_coroutines() -> None:
    heard: list[tuple[str, str, dict[str, Any]]] = []
    hooks = Hooks(manager(("a", Heard("a", heard)), ("b", Heard("b", heard))), SETTINGS)
    await hooks.dispatch_sent(dispatch_id=7, campaign_id=1, recipient="r@x", message_id="<m>")
    await hooks.sender_parked(sender_id=3, reason="535")
    # The last registered runs first (pluggy's order), each with the arguments it names.
    assert heard == [
        ("b", "dispatch_sent", {"id": 7, "mid": "<m>"}),
        ("a", "dispatch_sent", {"id": 7, "mid": "<m>"}),
        ("b", "sender_parked", {"sender": 3, "reason": "535"}),
        ("a", "sender_parked", {"sender": 3, "reason": "535"}),
    ]


async def test_a_raising_event_plugin_is_logged_and_stops_neither_caller_nor_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heard: list[tuple[str, str, dict[str, Any]]] = []
    # "bad" runs between the two listeners: both still hear every event.
    pm = manager(
        ("first", Heard("first", heard)), ("bad", Raises()), ("last", Heard("last", heard))
    )
    hooks = Hooks(pm, SETTINGS)
    with caplog.at_level(logging.ERROR, logger="dispatch_engine.plugins"):
        await hooks.dispatch_sent(dispatch_id=5, campaign_id=1, recipient="r@x", message_id="<m>")
        await hooks.campaign_completed(campaign_id=1, owner_id=2)
    assert [(who, hook) for who, hook, _ in heard] == [
        ("last", "dispatch_sent"),
        ("first", "dispatch_sent"),
        ("last", "campaign_completed"),
        ("first", "campaign_completed"),
    ]
    failures = [(r.getMessage(), str(r.exc_info[1])) for r in caplog.records if r.exc_info]
    assert failures == [
        ("plugin bad raised in dispatch_sent", "boom on 5"),
        ("plugin bad raised in campaign_completed", "async boom"),
    ]


class Offers:
    def __init__(self, *specs: TransportSpec) -> None:
        self.specs = list(specs)
        self.calls = 0

    @hookimpl
    def register_transports(self, settings: Settings) -> list[TransportSpec]:
        self.calls += 1
        assert settings is SETTINGS
        return self.specs


class BuiltinOffers(Offers):
    @hookimpl(trylast=True)
    def register_transports(self, settings: Settings) -> list[TransportSpec]:
        return super().register_transports(settings)


class OffersLater:
    """The same, as a coroutine: awaited like any other."""

    def __init__(self, *specs: TransportSpec) -> None:
        self.specs = list(specs)

    @hookimpl
    async def register_transports(self) -> list[TransportSpec]:
        await asyncio.sleep(0)
        return self.specs


async def test_the_first_spec_of_a_name_wins_and_built_ins_come_last() -> None:
    builtin = BuiltinOffers(spec("smtp", "built-in"), spec("capture", "built-in"))
    early = Offers(spec("smtp", "early"), spec("early", "early"))
    late = OffersLater(spec("smtp", "late"), spec("late", "late"))
    # The built-in is registered last, yet runs last (trylast); "late" was registered after
    # "early", so it runs first and its smtp wins.
    hooks = Hooks(manager(("early", early), ("late", late), ("builtin", builtin)), SETTINGS)
    offered = [(s.name, s.description) for s in await hooks.transports()]
    assert offered == [
        ("smtp", "late"),
        ("late", "late"),
        ("early", "early"),
        ("capture", "built-in"),
    ]


async def test_registrations_are_collected_once_and_cached() -> None:
    plugin = Offers(spec("one"))
    pm = manager(("p", plugin))
    hooks = Hooks(pm, SETTINGS)
    first = await hooks.transports()
    first.append(spec("changed by a caller"))
    assert [s.name for s in await hooks.transports()] == ["one"]  # a copy each time
    assert plugin.calls == 1
    # The cache is per facade: a new process (a new facade) asks again.
    assert [s.name for s in await Hooks(pm, SETTINGS).transports()] == ["one"]
    assert plugin.calls == 2


class BreaksAtStart:
    @hookimpl
    async def startup(self, app: web.Application) -> None:
        raise ConnectionError("no database")

    @hookimpl
    def register_transports(self) -> list[TransportSpec]:
        raise KeyError("missing")


class StartsFine:
    def __init__(self) -> None:
        self.started = 0

    @hookimpl(tryfirst=True)
    def startup(self, settings: Settings, app: web.Application) -> None:
        self.started += 1


async def test_a_failing_registration_or_lifecycle_hook_stops_the_caller_naming_the_plugin() -> (
    None
):
    fine = StartsFine()
    hooks = Hooks(manager(("fine", fine), ("broken", BreaksAtStart())), SETTINGS)
    with pytest.raises(PluginError) as raised:
        await hooks.startup(web.Application())
    assert str(raised.value) == "plugin 'broken' failed in startup: ConnectionError: no database"
    assert isinstance(raised.value.__cause__, ConnectionError)
    assert fine.started == 1  # tryfirst: it ran before the broken one
    with pytest.raises(PluginError, match=r"^plugin 'broken' failed in register_transports: "):
        await hooks.transports()


class Web:
    def __init__(self, path: str) -> None:
        self.path = path

    @hookimpl
    def register_routes(self) -> web.RouteTableDef:
        table = web.RouteTableDef()

        @table.get(self.path)
        async def page(request: web.Request) -> web.Response:
            return web.Response(text=self.path)

        return table

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        cli.add_command(click.Command(self.path.strip("/")))


async def test_routes_and_commands_from_every_plugin() -> None:
    hooks = Hooks(manager(("a", Web("/a")), ("b", Web("/b"))), SETTINGS)
    routes = await hooks.routes()
    assert [r.path for r in routes if isinstance(r, web.RouteDef)] == ["/b", "/a"]
    group = click.Group()
    await hooks.add_commands(group)
    assert sorted(group.commands) == ["a", "b"]


async def test_has_listeners_follows_what_is_registered() -> None:
    pm = manager()
    hooks = Hooks(pm, SETTINGS)
    assert not hooks.has_dispatch_sent and not hooks.has_dispatch_failed
    pm.register(Heard("late", []), name="late")  # e.g. dispatch_engine.testing's plugins
    assert hooks.has_dispatch_sent and not hooks.has_dispatch_failed


async def test_no_plugins_means_empty_registrations_and_silent_events() -> None:
    hooks = Hooks.none(replace(SETTINGS, transport="capture"))
    assert await hooks.transports() == []
    assert await hooks.pacing_policies() == []
    assert await hooks.auth_providers() == []
    assert await hooks.routes() == []
    assert not hooks.has_dispatch_sent
    await hooks.campaign_completed(campaign_id=1, owner_id=1)
    await hooks.startup(web.Application())
